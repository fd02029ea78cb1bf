"""Errors raised by Quiver, on both sides of the wire.

Every error knows the gRPC status code it travels as, so a server raises the
same class a client later receives::

    QuiverError                      UNKNOWN
    ├── InvalidArgumentError         INVALID_ARGUMENT  (carries field violations)
    │   └── DefinitionError          INVALID_ARGUMENT  (a feature repo that does not validate)
    ├── NotFoundError                NOT_FOUND         (unknown view, feature, service, spine)
    ├── FailedPreconditionError      FAILED_PRECONDITION (e.g. nothing applied yet, stale ticket)
    ├── ResourceExhaustedError       RESOURCE_EXHAUSTED (a request over a configured limit)
    ├── UnauthenticatedError         UNAUTHENTICATED   (no, expired or unverifiable credentials)
    ├── PermissionDeniedError        PERMISSION_DENIED (the caller may not do this)
    ├── UnavailableError             UNAVAILABLE       (a store or server cannot be reached)
    ├── DeadlineExceededError        DEADLINE_EXCEEDED
    ├── UnimplementedError           UNIMPLEMENTED
    └── InternalError                INTERNAL

Errors raised from a call keep what came over the wire: ``grpc_status`` (the
`grpc.StatusCode`), ``details`` (the raw `google.rpc.Status` bytes, if any) and
``reason`` (the ErrorInfo reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

__all__ = [
    "DeadlineExceededError",
    "DefinitionError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuiverError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "error_for_code",
]

ERROR_DOMAIN = "quiver.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: where it is and what is allowed."""

    field: str
    description: str


class QuiverError(Exception):
    """Base class of every Quiver error."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        details: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        # Raw serialized google.rpc.Status when this error came from a call.
        self.details = details

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return self.grpc_code


class InvalidArgumentError(QuiverError):
    """The request or definition is malformed; `violations` says where."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        details: bytes | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, details=details)
        self.violations = list(violations)

    @classmethod
    def for_field(cls, field: str, description: str, **kwargs: object) -> InvalidArgumentError:
        """An error about one field, with the field named in the message too."""
        return cls(
            f"{field}: {description}",
            violations=[FieldViolation(field, description)],
            **kwargs,  # type: ignore[arg-type]
        )


class DefinitionError(InvalidArgumentError):
    """A feature definition or feature repository is invalid."""

    default_reason = "INVALID_DEFINITION"


class NotFoundError(QuiverError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class FailedPreconditionError(QuiverError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhaustedError(QuiverError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class UnauthenticatedError(QuiverError):
    """The call carried no credentials, or ones the server cannot verify.

    `reason` says which (e.g. ``TOKEN_MISSING``, ``TOKEN_EXPIRED``) without
    anything that would help forge a token.
    """

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDeniedError(QuiverError):
    """The caller is known but no permission allows this action."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class UnavailableError(QuiverError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceededError(QuiverError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class UnimplementedError(QuiverError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class InternalError(QuiverError):
    grpc_code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[QuiverError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        FailedPreconditionError,
        ResourceExhaustedError,
        UnauthenticatedError,
        PermissionDeniedError,
        UnavailableError,
        DeadlineExceededError,
        UnimplementedError,
        InternalError,
    )
}


def error_for_code(code: grpc.StatusCode) -> type[QuiverError]:
    """The error class a status code maps to (QuiverError for the rest)."""
    return _BY_CODE.get(code, QuiverError)
