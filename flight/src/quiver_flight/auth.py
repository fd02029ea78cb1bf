"""The Flight edge of access control: authenticate every call from its headers.

`AuthMiddlewareFactory` reads the ``authorization: Bearer <token>`` call
header (the same header gRPC clients send as metadata; Flight's handshake
flow is not used) and refuses the call before its handler with
`FlightUnauthenticatedError`, whose extra_info carries the same
google.rpc.Status the gRPC server sends. Handlers decorated with
`with_call_access` run with the call's `CallAccess` current, so the policy
checks made while planning and opening tickets know the principal; the
middleware writes the audit line when the call ends.

Arrow Flight does not show the client certificate to the server, so mutual
TLS on Flight admits only certificates of the client CA but cannot name the
principal: Flight callers authenticate with bearer tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from pyarrow import flight

from quiver.errors import QuiverError
from quiver.status import flight_error_code
from quiver.tracing import flight_method
from quiver_flight.convert import flight_error
from quiver_server.auth import audit
from quiver_server.auth.authenticator import Authenticator
from quiver_server.auth.principal import CallAccess, enter_call, exit_call

MIDDLEWARE_KEY = "quiver.auth"

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")


class AuthMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    """One authenticated call's access state."""

    def __init__(self, call: CallAccess) -> None:
        self.call = call

    def sending_headers(self) -> dict[str, str]:
        return {}

    def call_completed(self, exception: BaseException | None) -> None:
        call = self.call
        if call.denied is not None or call.audited:
            status = "OK" if exception is None else flight_error_code(exception).name
            audit.call_completed(call, status)


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Pass as ``middleware={MIDDLEWARE_KEY: factory}``; see the module doc."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[Any]]) -> AuthMiddleware:
        method = flight_method(info.method)
        values = headers.get("authorization") or [None]
        authorization = values[0] if isinstance(values[0], str) else None
        try:
            principal = self.authenticator.authenticate(authorization)
        except QuiverError as exc:
            audit.unauthenticated(method, "flight", exc.reason, None)
            raise flight_error(exc) from None
        return AuthMiddleware(CallAccess(principal, method, "flight"))


def with_call_access(
    handler: Callable[Concatenate[S, Any, P], R],
) -> Callable[Concatenate[S, Any, P], R]:
    """Run a FlightServerBase method ``(self, context, ...)`` with its call's access state current."""

    @functools.wraps(handler)
    def wrapper(self: S, context: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        middleware = context.get_middleware(MIDDLEWARE_KEY)
        if middleware is None:
            return handler(self, context, *args, **kwargs)
        token = enter_call(middleware.call)
        try:
            return handler(self, context, *args, **kwargs)
        finally:
            exit_call(token)

    return cast("Callable[Concatenate[S, Any, P], R]", wrapper)
