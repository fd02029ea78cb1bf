"""The Aerospike store's connection: lazy connect, reconnect, health, and errors.

The store must exist even while the cluster is down, so the serving server can
start, report NOT_SERVING and recover on its own. So the client is created
lazily: at construction and then at most once per `RECONNECT_INTERVAL_SECONDS`,
from a call or from `healthy()`; calls in between fail at once with
UnavailableError naming the last cause. Once connected, the client's own tend
thread follows the cluster: nodes that leave and come back are picked up
without a new client (checked by stopping and restarting a server).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aerospike
import structlog
from aerospike import exception as aerospike_exception

from quiver.errors import InvalidArgumentError, QuiverError, UnavailableError
from quiver_server.config import AerospikeOnlineStoreConfig
from quiver_server.online.aerospike_policy import (
    BATCH_FAILED,
    FORBIDDEN,
    OK,
    PARAM_ERROR,
    client_config,
    describe_code,
    describe_exception,
    error_for_code,
    redacted,
)

log = structlog.get_logger(__name__)

# How often a store without a client tries to connect again.
RECONNECT_INTERVAL_SECONDS = 1.0
# Budget of the info ping behind `healthy()`.
HEALTH_TIMEOUT_MS = 500


class Connection:
    """One aerospike client for a store, created when the cluster can be reached.

    Args:
        config: The store's configuration.

    Raises:
        InvalidArgumentError: a malformed host, a user without its password, or
            a configuration the client rejects.
    """

    def __init__(self, config: AerospikeOnlineStoreConfig) -> None:
        self.config = config
        self.namespace = config.namespace
        hosts = ",".join(config.hosts)
        self.where = f"online store aerospike at {hosts} (namespace {config.namespace!r})"
        self._client_config = client_config(config)
        self._client: aerospike.Client | None = None
        self._lock = threading.Lock()  # held while connecting or closing
        self._closed = False
        self._last_attempt = float("-inf")
        self._last_error = "not connected yet"
        self.try_connect()

    @property
    def hosts(self) -> list[tuple[Any, ...]]:
        hosts: list[tuple[Any, ...]] = redacted(self._client_config)["hosts"]
        return hosts

    def client(self) -> aerospike.Client:
        """The client, connecting first if due.

        Raises:
            UnavailableError: not connected (with the last cause), or closed.
        """
        client = self._client or self.try_connect()
        if client is None:
            if self._closed:
                raise UnavailableError(f"{self.where} is closed")
            raise UnavailableError(
                f"{self.where} unavailable: cannot connect: {self._last_error} "
                f"(retrying at most every {RECONNECT_INTERVAL_SECONDS:g}s)"
            )
        return client

    def try_connect(self) -> aerospike.Client | None:
        """Connect unless connected, closed, tried too recently or being tried by another thread.

        Returns the client, or None when there is none (yet).
        """
        if self._closed or time.monotonic() - self._last_attempt < RECONNECT_INTERVAL_SECONDS:
            return self._client
        if not self._lock.acquire(blocking=False):
            return self._client  # another thread is connecting: do not queue behind it
        try:
            if self._client is not None or self._closed:
                return self._client
            self._last_attempt = time.monotonic()
            try:
                # Creating the client connects (client 14+), within connect_timeout.
                client = aerospike.client(self._client_config)
            except aerospike_exception.ParamError as exc:
                # A configuration the client rejects: retrying cannot help.
                raise InvalidArgumentError.for_field(
                    "online_store", f"the Aerospike client rejects it: {describe_exception(exc)}"
                ) from exc
            except aerospike_exception.AerospikeError as exc:
                self._failed(describe_exception(exc))
                return None
            problem = self._check_namespace(client)
            if problem is not None:
                client.close()
                self._failed(problem)
                return None
            self._client = client
            log.info("aerospike connected", where=self.where)
            return client
        finally:
            self._lock.release()

    def healthy(self) -> bool:
        """Whether the cluster answers an info ping within `HEALTH_TIMEOUT_MS`.

        Also the place a store without a client retries, so a server that
        started while the cluster was down recovers without any request.
        """
        client = self._client or self.try_connect()
        if client is None or not client.is_connected():
            return False
        try:
            reply = client.info_random_node("status", {"timeout": HEALTH_TIMEOUT_MS})
        except aerospike_exception.AerospikeError:
            return False
        return "ok" in str(reply)

    def close(self) -> None:
        """Close the client; later calls raise UnavailableError."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Raise the client's exceptions inside the block as Quiver errors naming the cause."""
        try:
            yield
        except aerospike_exception.AerospikeError as exc:
            code = exc.code if isinstance(exc.code, int) else -1
            if code == PARAM_ERROR:
                # The client refused a value before sending anything (e.g. an int
                # past 64 bits).
                message = f"{self.where}: {action}: bad value: {describe_exception(exc)}"
            else:
                message = f"{self.where} unavailable: {action}: {describe_exception(exc)}"
            raise error_for_code(code, message) from exc
        except (OverflowError, TypeError) as exc:
            raise InvalidArgumentError(
                f"{self.where}: {action}: bad value: {type(exc).__name__}: {exc}"
            ) from exc

    def batch_error(
        self, client: aerospike.Client, result: Any, code: int | None, message: str, ttl: int = 0
    ) -> QuiverError:
        """The error for a batch call that did not fully succeed.

        The batch call does not raise: it reports a code for the whole batch
        and one per record. The whole batch's code says more (ConnectionError
        rather than each record's NoResponse) unless it is only "some records
        failed", when the first failed record's `code` is reported.
        """
        if result.result not in (OK, BATCH_FAILED) or code is None:
            code = result.result
        detail = describe_code(code)
        if not client.is_connected():
            detail += "; no node of the cluster is reachable"
        elif code == FORBIDDEN and 0 < ttl != aerospike.TTL_NEVER_EXPIRE:
            detail += (
                "; records of views with a ttl need a namespace that allows TTLs "
                "(nsup-period > 0, or allow-ttl-without-nsup true)"
            )
        return error_for_code(code, f"{self.where}: {message}: {detail}")

    def _failed(self, cause: str) -> None:
        self._last_error = cause
        log.warning("aerospike connect failed", where=self.where, error=cause)

    def _check_namespace(self, client: aerospike.Client) -> str | None:
        """Why the cluster cannot serve the namespace, or None when it can."""
        try:
            reply = client.info_random_node(
                "namespaces", {"timeout": self.config.connect_timeout_ms}
            )
        except aerospike_exception.AerospikeError as exc:
            return f"asking for namespaces: {describe_exception(exc)}"
        # The reply is "namespaces\t<ns1>;<ns2>\n".
        names = str(reply).strip().rpartition("\t")[2].split(";")
        if self.namespace not in names:
            return (
                f"namespace {self.namespace!r} is not configured on the cluster "
                f"(it has: {', '.join(n for n in names if n) or 'none'})"
            )
        return None
