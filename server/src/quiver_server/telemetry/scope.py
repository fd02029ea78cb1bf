"""The telemetry of the call being handled, carried in a context variable.

The gRPC interceptor, the Flight middleware and the materialization hook set a
`Scope` for the duration of a call; the few decorators on business code
(`traced`, `traced_encoding`, ...) read it. Outside a call, or with tracing and
metrics both off, the scope is None and a decorated function costs one
context-variable lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:
    from quiver_server.telemetry.flight_middleware import StreamStats
    from quiver_server.telemetry.metrics import OnlineMetrics
    from quiver_server.telemetry.recorder import RecordedCall

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


@dataclass(slots=True)
class Scope:
    """What instrumented code may use during one call."""

    # The call's spans, when this process traces.
    call: RecordedCall | None = None
    online: OnlineMetrics | None = None
    # The caller's trace id when this process does not trace but the caller
    # does: log lines still carry it, so they can be joined to the caller's trace.
    remote_trace_id: str | None = None
    # Arrow data moved by the current Flight call (see `flight_middleware.count_batches`).
    stream: StreamStats | None = None


_SCOPE: ContextVar[Scope | None] = ContextVar("quiver_telemetry_scope", default=None)


def current_scope() -> Scope | None:
    return _SCOPE.get()


def enter_scope(scope: Scope) -> Token[Scope | None]:
    return _SCOPE.set(scope)


def exit_scope(token: Token[Scope | None]) -> None:
    _SCOPE.reset(token)


def traced(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record the function as a child span named `name` when the call is traced.

    Untraced (or not sampled), the function runs as is, after one
    context-variable lookup.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            scope = _SCOPE.get()
            call = scope.call if scope is not None else None
            if call is None or not call.sampled:
                return function(*args, **kwargs)
            child = call.begin(name)
            try:
                return function(*args, **kwargs)
            except BaseException as exc:
                child.fail(exc)
                raise
            finally:
                call.end(child)

        return wrapper

    return decorate


def traced_iteration(name: str, items: Iterator[T]) -> Iterator[T]:
    """`items`, recorded as one child span from the first item to the last.

    For lazily computed streams (a training-set partition): a function span
    would end before any work is done. Iterate it in one thread and context.
    """
    scope = _SCOPE.get()
    call = scope.call if scope is not None else None
    if call is None or not call.sampled:
        return items
    return _recorded(call, name, items)


def _recorded(call: RecordedCall, name: str, items: Iterator[T]) -> Iterator[T]:
    child = call.begin(name)
    count = 0
    try:
        for item in items:
            count += 1
            yield item
    except BaseException as exc:
        child.fail(exc)
        raise
    finally:
        child.set_attribute("quiver.batches", count)
        call.end(child)
