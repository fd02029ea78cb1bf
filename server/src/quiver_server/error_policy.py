"""What a failure means for the caller: one policy for gRPC and Flight alike.

A `QuiverError` is the caller's answer as it is (it knows its status code). An
`OSError` means a store cannot be reached: UNAVAILABLE, which clients retry.
Anything else is a bug: it is logged here with its traceback, and the caller
gets INTERNAL without the internals (no traceback, no server path).

The transports only carry the result: `quiver_server.serving.status` aborts the
gRPC call with it, `quiver_flight.convert.flight_error` raises the Flight error.
"""

from __future__ import annotations

import structlog

from quiver.errors import InternalError, QuiverError, UnavailableError

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
