"""gRPC servicers answer failures with rich statuses (google.rpc.Status with details).

`rpc_errors` lets a servicer method raise; what it raised is mapped by the shared
error policy (`quiver_server.error_policy`) and the call is aborted with the
status code, the (bounded) message and the serialized status in the standard
``grpc-status-details-bin`` trailer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from quiver.errors import QuiverError
from quiver.status import DETAILS_KEY
from quiver_server.error_policy import as_quiver_error, to_status

F = TypeVar("F", bound=Callable[..., Any])


def abort(context: grpc.ServicerContext, error: QuiverError) -> NoReturn:
    """End the call with `error`'s code and message, its rich status in the trailer."""
    status = to_status(error)
    context.set_trailing_metadata(((DETAILS_KEY, status.SerializeToString()),))
    context.abort(error.grpc_code, status.message)
    raise AssertionError("abort returned")  # pragma: no cover


def rpc_errors(method: F) -> F:
    """Let a servicer method raise; the client gets a rich status (see the module doc)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            abort(context, as_quiver_error(exc, method.__name__, store="online store"))

    return wrapper  # type: ignore[return-value]
