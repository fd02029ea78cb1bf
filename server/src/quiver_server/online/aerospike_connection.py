"""The Aerospike store's connection: lazy connect, reconnect, health, and errors.

The store must exist even while the cluster is down, so the serving server can
start, report NOT_SERVING and recover on its own. So the client is created
lazily: at construction, then at most once per `RECONNECT_INTERVAL_SECONDS`,
from `healthy()` (the server's health check thread) or, in the background, from
a call; calls without a client fail at once with UnavailableError naming the
last cause, never waiting for a connect. Once connected, the client's own tend
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
        self._lock = threading.Lock()  # guards the fields below; held only briefly
        self._closed = False
        self._connecting = False
        self._last_attempt = float("-inf")
        self._last_error = "not connected yet"
        if self._claim():
            self._connect()

    @property
    def hosts(self) -> list[tuple[Any, ...]]:
        hosts: list[tuple[Any, ...]] = redacted(self._client_config)["hosts"]
        return hosts

    def client(self) -> aerospike.Client:
        """The client; when there is none, a reconnect is started if due.

        Raises:
            UnavailableError: not connected (with the last cause), or closed.
        """
        client = self._client
        if client is not None:
            return client
        if self._claim():
            # Connecting can take connect_timeout_ms per seed that does not
            # answer; no request waits for it: this call fails now, later ones
            # find the client.
            threading.Thread(
                target=self._connect_quietly, name="aerospike-connect", daemon=True
            ).start()
        if self._closed:
            raise UnavailableError(f"{self.where} is closed")
        raise UnavailableError(
            f"{self.where} unavailable: cannot connect: {self._last_error} "
            f"(retrying at most every {RECONNECT_INTERVAL_SECONDS:g}s)"
        )

    def healthy(self) -> bool:
        """Whether the cluster answers an info ping within `HEALTH_TIMEOUT_MS`.

        Without a client, first tries to connect if due (the health check runs
        in its own thread, so it may wait): a server that started while the
        cluster was down recovers without any request.
        """
        client = self._client
        if client is None and self._claim():
            client = self._connect_quietly()
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

    def _claim(self) -> bool:
        """Whether the caller may connect now: not connected, not closed, no
        attempt under way, and the last one at least RECONNECT_INTERVAL_SECONDS ago."""
        with self._lock:
            now = time.monotonic()
            if (
                self._closed
                or self._client is not None
                or self._connecting
                or now - self._last_attempt < RECONNECT_INTERVAL_SECONDS
            ):
                return False
            self._connecting = True
            self._last_attempt = now
            return True

    def _connect(self) -> aerospike.Client | None:
        """Create the client, after a successful `_claim`; None when the cluster cannot serve.

        Raises:
            InvalidArgumentError: the client rejects the configuration.
        """
        try:
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
            with self._lock:
                closed = self._closed
                if not closed:
                    self._client = client
            if closed:  # closed while connecting
                client.close()
                return None
            self._last_error = "not connected"
            log.info("aerospike connected", where=self.where)
            return client
        finally:
            with self._lock:
                self._connecting = False

    def _connect_quietly(self) -> aerospike.Client | None:
        try:
            return self._connect()
        except QuiverError as exc:
            self._failed(exc.message)
            return None

    def _failed(self, cause: str) -> None:
        # Log a cause once, not on every retry while the cluster stays down.
        if cause != self._last_error:
            log.warning("aerospike connect failed", where=self.where, error=cause)
        self._last_error = cause

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
