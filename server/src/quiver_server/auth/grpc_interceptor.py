"""The gRPC edge of access control: authenticate every call before its handler runs.

`AuthInterceptor` reads ``authorization: Bearer <token>`` metadata (or the
verified client certificate of a mutual-TLS connection), refuses the call
with UNAUTHENTICATED and a rich status when that fails, and otherwise makes a
`CallAccess` current while the handler runs, so the policy checks in the
servicers know who is calling. When the call ends it writes the audit line.

Health checks are not authenticated (probes carry no tokens and reveal
nothing); every other service is, reflection included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

from quiver.errors import QuiverError
from quiver_server.auth import audit
from quiver_server.auth.authenticator import Authenticator
from quiver_server.auth.principal import CallAccess, enter_call, exit_call
from quiver_server.serving.status import abort

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

UNAUTHENTICATED_SERVICES = ("grpc.health.v1.Health",)
_PEM_KEY = "x509_pem_cert"


def _split(path: str) -> tuple[str, str]:
    service, _, method = path.lstrip("/").rpartition("/")
    return service, method


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates each call; see the module doc."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        self._handlers: dict[str, tuple[Handler, Handler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or path.lstrip("/").startswith(UNAUTHENTICATED_SERVICES):
            return handler
        cached = self._handlers.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(path, handler)
        self._handlers[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, path: str, handler: Handler) -> Handler:
        _, method = _split(path)
        kind, factory = next(
            (name, make) for name, make in (
                ("unary_unary", grpc.unary_unary_rpc_method_handler),
                ("unary_stream", grpc.unary_stream_rpc_method_handler),
                ("stream_unary", grpc.stream_unary_rpc_method_handler),
                ("stream_stream", grpc.stream_stream_rpc_method_handler),
            ) if getattr(handler, name) is not None
        )
        inner = getattr(handler, kind)
        streams_out = kind.endswith("_stream")
        authenticate = self._authenticator.authenticate
        with_certificates = self._authenticator.mtls is not None

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            authorization: str | None = None
            for key, value in context.invocation_metadata() or ():
                if key == "authorization":
                    authorization = value if isinstance(value, str) else None
                    break

            def certificate() -> bytes | None:
                pems = context.auth_context().get(_PEM_KEY)
                return bytes(pems[0]) if pems else None

            try:
                principal = authenticate(authorization, certificate if with_certificates else None)
            except QuiverError as exc:
                audit.unauthenticated(method, "grpc", exc.reason, context.peer())
                abort(context, exc)
            call = CallAccess(principal, method, "grpc")
            if streams_out:
                return _stream(inner, request, context, call)
            token = enter_call(call)
            response = None
            try:
                response = inner(request, context)
                return response
            finally:
                exit_call(token)
                _completed(call, context, response is not None)

        return factory(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _stream(inner: Any, request: Any, context: grpc.ServicerContext, call: CallAccess) -> Any:
    token = enter_call(call)
    try:
        yield from inner(request, context)
    finally:
        exit_call(token)
        _completed(call, context, True)


def _completed(call: CallAccess, context: grpc.ServicerContext, answered: bool) -> None:
    if call.denied is None and not call.audited:
        return
    code = context.code()  # type: ignore[attr-defined]
    status = code.name if code is not None else ("OK" if answered else "UNKNOWN")
    audit.call_completed(call, status)
