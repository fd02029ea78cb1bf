"""Aerospike client configuration and policies from `AerospikeOnlineStoreConfig`,
and the translation of Aerospike failures into Quiver errors.

Pure functions, testable without a server.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import aerospike
from aerospike import exception as aerospike_exception

from quiver.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    QuiverError,
    UnavailableError,
)
from quiver_server.config import AerospikeOnlineStoreConfig

DEFAULT_PORT = 3000

REPLICAS: dict[str, int] = {
    "master": aerospike.POLICY_REPLICA_MASTER,
    "sequence": aerospike.POLICY_REPLICA_SEQUENCE,
    "prefer_rack": aerospike.POLICY_REPLICA_PREFER_RACK,
    "any": aerospike.POLICY_REPLICA_ANY,
}

# Result codes (`as_status`) the store acts on.
OK = 0
PARAM_ERROR = -2
BATCH_FAILED = -16  # some records of a batch failed; each record has its own code
RECORD_NOT_FOUND = 2
TIMEOUT = 9
FORBIDDEN = 22
FILTERED_OUT = 27

# Codes that mean "the request was wrong", not "the cluster is unwell".
_INVALID_ARGUMENT_CODES = frozenset({-2, 4, 12, 13})  # param, invalid request, bin type, too big
# Codes that mean "the cluster or its configuration does not allow this".
_FAILED_PRECONDITION_CODES = frozenset({
    10,  # always forbidden
    16,  # unsupported feature (e.g. boolean bins on a server older than 5.6)
    20,  # namespace not found
    21,  # bin name too long or too many bin names
    22,  # forbidden (e.g. TTLs with nsup-period 0, stop-writes on a set)
    150,  # batches disabled on the server
    151,  # a batch larger than the server's batch-max-requests: lower batch_size
    *range(50, 90),  # security: not authenticated, role violation, quotas...
})
_DEADLINE_CODES = frozenset({TIMEOUT, 212})  # timeout, query timeout


def _exception_names() -> dict[int, str]:
    names: dict[int, str] = {}
    for name, cls in vars(aerospike_exception).items():
        code = getattr(cls, "code", None)
        if inspect.isclass(cls) and isinstance(code, int):
            names.setdefault(code, name)
    return names


# The client's own exception class names by result code, so failures reported
# only as a code (batch results) read the same as raised ones.
_CODE_NAMES = _exception_names()


def describe_code(code: int) -> str:
    """A result code with its Aerospike exception name: ``"TimeoutError (code 9)"``."""
    name = _CODE_NAMES.get(code)
    return f"{name} (code {code})" if name else f"code {code}"


def describe_exception(exc: BaseException) -> str:
    """An Aerospike exception as ``"ConnectionError (code -10): Failed to connect"``."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "msg", None) or str(exc)
    where = f"{type(exc).__name__} (code {code})" if code is not None else type(exc).__name__
    return f"{where}: {message}"


def error_for_code(code: int, message: str) -> QuiverError:
    """The Quiver error for an Aerospike result code.

    Timeouts are DEADLINE_EXCEEDED; requests the server cannot take are
    INVALID_ARGUMENT or FAILED_PRECONDITION; everything else (connection lost,
    no nodes, overload, hot keys, full batch queues, unknown codes) is UNAVAILABLE,
    the retryable status.
    """
    if code in _DEADLINE_CODES:
        return DeadlineExceededError(message)
    if code in _INVALID_ARGUMENT_CODES:
        return InvalidArgumentError(message)
    if code in _FAILED_PRECONDITION_CODES:
        return FailedPreconditionError(message)
    return UnavailableError(message)


def parse_hosts(hosts: list[str], tls_name: str | None) -> list[tuple[Any, ...]]:
    """``host[:port]`` strings (IPv6 as ``[addr]:port``) as client host tuples."""
    parsed: list[tuple[Any, ...]] = []
    for i, text in enumerate(hosts):
        host, port_text = text.strip(), ""
        if host.startswith("["):
            end = host.find("]")
            host, port_text = host[1:end], host[end + 1 :].removeprefix(":")
        elif host.count(":") == 1:
            host, port_text = host.split(":")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            port = -1
        if not host or not 0 < port < 65536:
            raise InvalidArgumentError.for_field(
                f"online_store.hosts[{i}]",
                f"{text!r} is not host:port (e.g. 127.0.0.1:3000 or [::1]:3000)",
            )
        parsed.append((host, port, tls_name) if tls_name else (host, port))
    if not parsed:
        raise InvalidArgumentError.for_field("online_store.hosts", "name at least one seed host")
    return parsed


def read_policy(config: AerospikeOnlineStoreConfig) -> dict[str, Any]:
    """The batch policy of reads: the whole batch within `read_timeout_ms`."""
    return {
        "total_timeout": config.read_timeout_ms,
        "socket_timeout": config.read_timeout_ms,
        "max_retries": config.max_retries,
        "sleep_between_retries": 0,
        "replica": REPLICAS[config.replica],
        # On a cluster of several nodes, ask them at once rather than one by one.
        "concurrent": True,
    }


def write_policy(config: AerospikeOnlineStoreConfig) -> dict[str, Any]:
    """The batch policy of writes and deletes (one chunk within `write_timeout_ms`).

    Retrying is safe: writes are filtered by their timestamps and replace the
    whole record, so applying one twice changes nothing.
    """
    return {
        "total_timeout": config.write_timeout_ms,
        "socket_timeout": config.write_timeout_ms,
        "max_retries": config.max_retries,
        "sleep_between_retries": 0,
    }


def password(
    config: AerospikeOnlineStoreConfig, env: Mapping[str, str] | None = None
) -> str | None:
    """The password from the environment variable `password_env`, when a user is set."""
    if config.user is None:
        return None
    value = (os.environ if env is None else env).get(config.password_env)
    if value is None:
        raise InvalidArgumentError.for_field(
            "online_store.password_env",
            f"user {config.user!r} is configured but environment variable "
            f"{config.password_env} holding the password is not set",
        )
    return value


def client_config(
    config: AerospikeOnlineStoreConfig, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The `aerospike.client()` configuration for `config`.

    Raises:
        InvalidArgumentError: a malformed host, or a user without a password.
    """
    tls = config.tls
    client: dict[str, Any] = {
        "hosts": parse_hosts(config.hosts, tls.name if tls.enabled else None),
        # Unknown keys in this dict or its policies are errors, not silently ignored.
        "validate_keys": True,
        "connect_timeout": config.connect_timeout_ms,
        # Native boolean bins (server 5.6+), so bool features read back as bool.
        "send_bool_as": aerospike.AS_BOOL,
        "policies": {
            "batch": read_policy(config),
            "batch_parent_write": write_policy(config),
            "info": {"timeout": config.connect_timeout_ms},
            "login_timeout_ms": config.connect_timeout_ms,
        },
    }
    if config.replica == "prefer_rack":
        client["rack_aware"] = True
    secret = password(config, env)
    if config.user is not None:
        client["user"] = config.user
        client["password"] = secret
    if tls.enabled:
        client["tls"] = {
            "enable": True,
            **{k: v for k, v in (
                ("cafile", tls.cafile), ("certfile", tls.certfile), ("keyfile", tls.keyfile),
            ) if v},
        }
    return client


def redacted(client: Mapping[str, Any]) -> dict[str, Any]:
    """`client` without its password, for logs and reprs."""
    return {k: ("***" if k == "password" else v) for k, v in client.items()}
