"""Rich error statuses on the wire: Quiver errors to `google.rpc.Status` bytes and back.

A failed call carries a serialized `google.rpc.Status` with an ErrorInfo detail
(reason, domain, metadata) and, for bad input, a BadRequest detail (one
violation per bad field): in the ``grpc-status-details-bin`` trailer over gRPC,
in the error's ``extra_info`` over Flight. The messages are the generated
wire-compatible copies in ``protos/quiver/rpc/v1/status.proto``; details keep
the standard type URLs (``type.googleapis.com/google.rpc.ErrorInfo``), so
standard tools read them too, and are matched here by the last part of the URL.

Servers encode with `encode_status`; clients turn a failed call into the
matching `quiver.errors` class with `from_rpc_error` / `from_flight_error`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import pyarrow as pa
from google.protobuf import any_pb2, message
from pyarrow import flight

from quiver.errors import (
    ERROR_DOMAIN,
    FieldViolation,
    InvalidArgumentError,
    QuiverError,
    error_for_code,
)
from quiver.rpc.v1 import status_pb2

__all__ = [
    "DETAILS_KEY",
    "RichStatus",
    "build_status",
    "decode_status",
    "encode_status",
    "error_from_status",
    "flight_error_code",
    "from_flight_error",
    "from_rpc_error",
]

DETAILS_KEY = "grpc-status-details-bin"
_TYPE_URL_PREFIX = "type.googleapis.com/"
_ERROR_INFO = "google.rpc.ErrorInfo"
_BAD_REQUEST = "google.rpc.BadRequest"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class RichStatus:
    """A decoded status: the code, message and what its details say."""

    code: grpc.StatusCode
    message: str
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[FieldViolation] = field(default_factory=list)


def _packed(name: str, detail: message.Message) -> any_pb2.Any:
    # Packed by hand: Any.Pack would name the copy (quiver.rpc.v1.ErrorInfo), and
    # standard tools look for the google.rpc names.
    return any_pb2.Any(type_url=_TYPE_URL_PREFIX + name, value=detail.SerializeToString())


def build_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str],
    violations: Sequence[FieldViolation] = (),
) -> status_pb2.Status:
    """A google.rpc.Status (the wire-compatible copy) with ErrorInfo and, if any, BadRequest."""
    status = status_pb2.Status(code=code.value[0], message=message)
    info = status_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    status.details.append(_packed(_ERROR_INFO, info))
    if violations:
        bad = status_pb2.BadRequest(field_violations=[
            status_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ])
        status.details.append(_packed(_BAD_REQUEST, bad))
    return status


def encode_status(error: QuiverError) -> bytes:
    """`error` as a serialized google.rpc.Status with ErrorInfo and, for bad input, BadRequest."""
    violations = error.violations if isinstance(error, InvalidArgumentError) else ()
    return build_status(
        error.grpc_code, error.message, error.reason, error.metadata, violations
    ).SerializeToString()


def decode_status(data: bytes) -> RichStatus | None:
    """Decode a serialized google.rpc.Status, or None when it is not one (or has no error code)."""
    try:
        status = status_pb2.Status.FromString(data)
    except message.DecodeError:
        return None
    code = _CODES.get(status.code)
    if code is None or code is grpc.StatusCode.OK:
        return None
    decoded = RichStatus(code, status.message)
    for detail in status.details:
        name = detail.type_url.rpartition("/")[2]
        try:
            if name == _ERROR_INFO:
                info = status_pb2.ErrorInfo.FromString(detail.value)
                decoded.reason = info.reason
                decoded.metadata.update(info.metadata)
            elif name == _BAD_REQUEST:
                bad = status_pb2.BadRequest.FromString(detail.value)
                decoded.violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
        except message.DecodeError:
            continue  # a garbled detail; the code and message still stand
    return decoded


def error_from_status(
    code: grpc.StatusCode,
    message: str,
    details: bytes | None,
    *,
    code_from_details: bool = False,
) -> QuiverError:
    """The QuiverError for a failed call, keeping the raw status bytes.

    With `code_from_details`, the code and message in `details` win over the
    transport's (Flight maps most gRPC codes onto one generic error class).
    """
    status = decode_status(details) if details else None
    if status is None:
        status = RichStatus(code, message)
    elif not code_from_details:
        status.code, status.message = code, message
    cls = error_for_code(status.code)
    error: QuiverError
    if issubclass(cls, InvalidArgumentError):
        error = cls(status.message, violations=status.violations, reason=status.reason,
                    metadata=status.metadata, details=details)
    else:
        error = cls(status.message, reason=status.reason, metadata=status.metadata,
                    details=details)
    error.grpc_code = status.code
    return error


_NAMED = {code.name: code for code in grpc.StatusCode if code is not grpc.StatusCode.OK}

# The gRPC code behind each Flight/Arrow error class, for errors without a status.
_FLIGHT_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (flight.FlightUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (flight.FlightTimedOutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (flight.FlightCancelledError, grpc.StatusCode.CANCELLED),
    (flight.FlightUnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (flight.FlightUnauthorizedError, grpc.StatusCode.PERMISSION_DENIED),
    (flight.FlightInternalError, grpc.StatusCode.INTERNAL),
    (pa.ArrowInvalid, grpc.StatusCode.INVALID_ARGUMENT),
    (pa.ArrowKeyError, grpc.StatusCode.NOT_FOUND),
    (pa.ArrowNotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
)


def flight_error_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code a failed Flight call ended with.

    Flight has error classes for only some codes, so Quiver servers put the
    real one in the google.rpc.Status in `extra_info`; it wins when present.
    """
    details = getattr(exc, "extra_info", None)
    status = decode_status(details) if details else None
    if status is not None:
        return status.code
    code = next((c for cls, c in _FLIGHT_CODES if isinstance(exc, cls)), grpc.StatusCode.UNKNOWN)
    if code is grpc.StatusCode.UNKNOWN and not isinstance(exc, flight.FlightError):
        # pyarrow's client drops the status of some refused calls (get_schema) and keeps
        # only the text, which a Quiver server starts with the code's name.
        text = str(exc).removeprefix("Unknown error: ")
        name = text.partition(":")[0]
        if name in _NAMED:
            return _NAMED[name]
    return code


def from_flight_error(exc: BaseException) -> QuiverError:
    """The QuiverError for a failed Flight call."""
    details = getattr(exc, "extra_info", None) or None
    text = str(exc).split(". Detail:", 1)[0].split("\n", 1)[0]
    return error_from_status(flight_error_code(exc), text, details, code_from_details=True)


def from_rpc_error(error: grpc.RpcError) -> QuiverError:
    """The QuiverError for a failed gRPC call."""
    if not isinstance(error, grpc.Call):
        return error_from_status(grpc.StatusCode.UNKNOWN, str(error), None)
    details: bytes | None = None
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            details = value
    return error_from_status(error.code(), error.details() or "", details)
