"""What a failure means for the caller: one policy for gRPC and Flight alike.

A `QuiverError` is the caller's answer as it is (it knows its status code). An
`OSError` means a store cannot be reached: UNAVAILABLE, which clients retry.
Anything else is a bug: it is logged here with its traceback, and the caller
gets INTERNAL without the internals (no traceback, no server path).

`to_status` builds the status both transports send, bounded (see
`quiver_server.echo`): whatever input an error repeats, it fits a client's
trailer limit with room to spare. The transports only carry it:
`quiver_server.serving.status` aborts the gRPC call with it,
`quiver_flight.convert.flight_error` raises the Flight error.
"""

from __future__ import annotations

import structlog

from quiver.errors import (
    InternalError,
    InvalidArgumentError,
    QuiverError,
    UnavailableError,
)
from quiver.rpc.v1 import status_pb2
from quiver.status import build_status
from quiver_server import echo

log = structlog.get_logger(__name__)


def as_quiver_error(exc: BaseException, where: str, *, store: str = "store") -> QuiverError:
    """The QuiverError to answer with for `exc`, raised while handling `where`.

    Args:
        exc: What the handler raised.
        where: The call (method name), for the log line and the INTERNAL message.
        store: What an OSError could not reach ("online store", "offline store").
    """
    if isinstance(exc, QuiverError):
        return exc
    if isinstance(exc, OSError):
        log.warning("store unavailable", call=where, error=str(exc))
        return UnavailableError(f"{store} unavailable: {exc}")
    log.error("unhandled error", call=where, exc_info=exc)
    return InternalError(f"internal error in {where}")


def to_status(error: QuiverError) -> status_pb2.Status:
    """`error` as a google.rpc.Status with ErrorInfo and, for bad input, BadRequest; bounded."""
    message = echo.clip_bytes(error.message, echo.MESSAGE_BYTES)
    metadata = echo.bounded_metadata(error.metadata)
    given = error.violations if isinstance(error, InvalidArgumentError) else []
    limit = echo.VIOLATIONS
    while True:
        violations = echo.bounded_violations(given, limit)
        status = build_status(error.grpc_code, message, error.reason, metadata, violations)
        if status.ByteSize() <= echo.DETAILS_BYTES:
            return status
        if given and limit > 0:  # with nothing given, there is nothing to drop or count
            limit = min(limit, len(given)) - 1
        elif metadata:
            metadata = {}
        else:
            return status  # message and one count line: within bounds by construction
