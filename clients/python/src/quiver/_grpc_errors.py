"""Typed errors from failed gRPC calls, keeping the raw status."""

from __future__ import annotations

import grpc

from quiver.errors import FieldViolation, InvalidArgumentError, QuiverError, error_for_code

_DETAILS_KEY = "grpc-status-details-bin"


def from_rpc_error(error: grpc.RpcError) -> QuiverError:
    """Build the matching QuiverError for a failed call.

    The rich status (ErrorInfo reason, BadRequest violations) is decoded when
    `googleapis-common-protos` is importable; the raw bytes are kept either way.
    """
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = error.details() if isinstance(error, grpc.Call) else str(error)
    details: bytes | None = None
    if isinstance(error, grpc.Call):
        for key, value in error.trailing_metadata() or ():
            if key == _DETAILS_KEY and isinstance(value, bytes):
                details = value
    reason, metadata, violations = _decode(details)
    cls = error_for_code(code)
    result: QuiverError
    if issubclass(cls, InvalidArgumentError):
        result = cls(message or "", violations=violations, reason=reason, metadata=metadata,
                     details=details)
    else:
        result = cls(message or "", reason=reason, metadata=metadata, details=details)
    result.grpc_code = code
    return result


def _decode(details: bytes | None) -> tuple[str | None, dict[str, str], list[FieldViolation]]:
    if not details:
        return None, {}, []
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:  # pragma: no cover - optional dependency
        return None, {}, []
    status = status_pb2.Status()
    status.ParseFromString(details)
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad):
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return reason, metadata, violations
