"""Typed errors from a failed call's google.rpc.Status (gRPC and Flight alike).

The server sends a `google.rpc.Status` with ErrorInfo and BadRequest details
(the `grpc-status-details-bin` trailer over gRPC, `extra_info` over Flight).
The client may depend only on protobuf itself, not on the google.rpc message
classes, so the few fields used are read straight from the wire format.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pyarrow as pa
from pyarrow import flight

from quiver.errors import FieldViolation, InvalidArgumentError, QuiverError, error_for_code

DETAILS_KEY = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_NAMED = {code.name: code for code in grpc.StatusCode if code is not grpc.StatusCode.OK}


@dataclass
class RichStatus:
    code: grpc.StatusCode
    message: str
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[FieldViolation] = field(default_factory=list)


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
    if code is grpc.StatusCode.UNKNOWN:
        # Some pyarrow calls (get_schema refused by server middleware) drop the status
        # and keep only its text, which a Quiver server starts with the code's name.
        name = str(exc).partition(":")[0]
        if name in _NAMED and not isinstance(exc, flight.FlightError | pa.ArrowException):
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


def decode_status(data: bytes) -> RichStatus | None:
    """Decode a google.rpc.Status with ErrorInfo and BadRequest details, or None."""
    try:
        code, text = 0, ""
        status = RichStatus(grpc.StatusCode.UNKNOWN, "")
        for number, value in _fields(data):
            if number == 1 and isinstance(value, int):
                code = value
            elif number == 2 and isinstance(value, bytes):
                text = value.decode()
            elif number == 3 and isinstance(value, bytes):
                _read_detail(value, status)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    if code == 0 or code not in _CODES:
        return None
    status.code, status.message = _CODES[code], text
    return status


def _read_detail(data: bytes, status: RichStatus) -> None:
    detail = dict(_fields(data))
    type_url = _text(detail.get(1))
    body = detail.get(2, b"")
    if not isinstance(body, bytes):
        raise ValueError("detail body is not bytes")
    if type_url.endswith("/google.rpc.ErrorInfo"):
        for number, value in _fields(body):
            if number == 1 and isinstance(value, bytes):
                status.reason = value.decode()
            elif number == 3 and isinstance(value, bytes):
                entry = dict(_fields(value))
                status.metadata[_text(entry.get(1))] = _text(entry.get(2))
    elif type_url.endswith("/google.rpc.BadRequest"):
        for number, value in _fields(body):
            if number == 1 and isinstance(value, bytes):
                item = dict(_fields(value))
                status.violations.append(FieldViolation(_text(item.get(1)), _text(item.get(2))))


def _text(value: int | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else ""


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: varints and length-delimited only."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            yield number, data[pos:pos + length]
            pos += length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
