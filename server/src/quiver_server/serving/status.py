"""Turning Quiver errors into rich gRPC statuses (google.rpc.Status + details)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from quiver.errors import (
    ERROR_DOMAIN,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    QuiverError,
    UnavailableError,
)
from quiver_server import echo

log = structlog.get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def to_status(error: QuiverError) -> status_pb2.Status:
    """A google.rpc.Status carrying ErrorInfo and, for bad input, BadRequest.

    Bounded (see `quiver_server.echo`): whatever input an error repeats, the
    status fits a client's trailer limit with room to spare.
    """
    message = echo.clip_bytes(error.message, echo.MESSAGE_BYTES)
    metadata = echo.bounded_metadata(error.metadata)
    given = error.violations if isinstance(error, InvalidArgumentError) else []
    limit = echo.VIOLATIONS
    while True:
        violations = echo.bounded_violations(given, limit)
        status = _status(error, message, metadata, violations)
        if status.ByteSize() <= echo.DETAILS_BYTES:
            return status
        if limit > 0:
            limit = min(limit, len(given)) - 1
        elif metadata:
            metadata = {}
        else:
            return status  # message and one count line: within bounds by construction


def _status(
    error: QuiverError,
    message: str,
    metadata: dict[str, str],
    violations: list[FieldViolation],
) -> status_pb2.Status:
    status = status_pb2.Status(code=error.grpc_code.value[0], message=message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata))
    status.details.append(info)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        status.details.append(detail)
    return status


def abort(context: grpc.ServicerContext, error: QuiverError) -> NoReturn:
    context.abort_with_status(rpc_status.to_status(to_status(error)))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def as_quiver_error(exc: BaseException, where: str, *, store: str = "store") -> QuiverError:
    """What an exception means for the caller, on gRPC and Flight alike.

    A QuiverError is the caller's answer as it is; an OSError means a store
    cannot be reached (UNAVAILABLE); anything else is a bug: it is logged with
    its traceback and reported as INTERNAL without leaking internals.
    """
    if isinstance(exc, QuiverError):
        return exc
    if isinstance(exc, OSError):
        log.warning("store unavailable", call=where, error=str(exc))
        return UnavailableError(f"{store} unavailable: {exc}")
    log.error("unhandled error", call=where, exc_info=exc)
    return InternalError(f"internal error in {where}")


def rpc_errors(method: F) -> F:
    """Let a servicer method raise QuiverError; the client gets a rich status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            abort(context, as_quiver_error(exc, method.__name__, store="online store"))

    return wrapper  # type: ignore[return-value]
