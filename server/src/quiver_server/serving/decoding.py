"""Request bytes that do not decode are the client's mistake: INVALID_ARGUMENT.

grpcio answers a request its deserializer rejects with INTERNAL ("Exception
deserializing request!"), which reads as a server bug. This interceptor, the
innermost of the server, decodes unary requests itself: bytes that are not the
method's request message become INVALID_ARGUMENT naming the request, and the
interceptors outside it (telemetry) see and log that status like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

from quiver.errors import InvalidArgumentError
from quiver_server.echo import clip
from quiver_server.serving.status import abort

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class _Undecodable:
    """What the lenient deserializer hands on in place of a request that did not decode."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


class RequestDecoding(grpc.ServerInterceptor):
    """Turns undecodable unary requests into INVALID_ARGUMENT (see the module docstring)."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, Handler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        path = handler_call_details.method
        cached = self._handlers.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            _checked(path, handler.unary_unary),
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._handlers[path] = (handler, wrapped)
        return wrapped


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises
            return _Undecodable(str(exc) or type(exc).__name__)

    return parse


def _checked(path: str, inner: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def behavior(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            abort(context, InvalidArgumentError.for_field(
                "request",
                f"the bytes sent to {path} are not its request message ({clip(request.problem, 200)})",
                reason="UNDECODABLE_REQUEST",
            ))
        return inner(request, context)

    return behavior
