"""The one tracing helper business code uses, `traced(name)`, and the call context edges attach.

Spans are the OpenTelemetry SDK's own. An edge (the gRPC interceptor, the Flight
middleware, the materialization job) opens its call's span and attaches it as the
current span with `enter`, together with the tracer that made it, so that
`traced` children and the instrumented store go to the same tracer provider even
when several servers with their own providers share a process (tests do).

Outside a traced call, or in a call that is not sampled, `traced` runs the
function as it is after two context lookups.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_TRACER = otel_context.create_key("quiver.tracer")


def call_context(span: Span, tracer: Tracer | None, parent: Context | None = None) -> Context:
    """`parent` (default: the current context) with `span` current and `tracer` for its children."""
    context = trace.set_span_in_context(span, parent)
    return otel_context.set_value(_TRACER, tracer, context) if tracer is not None else context


def enter(context: Context) -> object:
    """Make `context` current; undo with `leave` in the same thread."""
    return otel_context.attach(context)


def leave(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


def current_tracer() -> Tracer | None:
    """The tracer of the current call when its span is being recorded, else None."""
    tracer = otel_context.get_value(_TRACER)
    if tracer is None or not trace.get_current_span().is_recording():
        return None
    return cast(Tracer, tracer)


def traced(name: str, kind: SpanKind = SpanKind.INTERNAL) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record each call of the function as a child span named `name`, in a traced call.

    The span records an exception that escapes, with status ERROR. A generator
    function's span covers its iteration, from the first item to the last, in
    the call that iterates it (a do_get computing batches on a helper thread);
    it is current while each item is computed.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(function):
            return cast("Callable[P, R]", _traced_generator(name, kind, function))

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            tracer = current_tracer()
            if tracer is None:
                return function(*args, **kwargs)
            with tracer.start_as_current_span(name, kind=kind):
                return function(*args, **kwargs)

        return wrapper

    return decorate


def _traced_generator(
    name: str, kind: SpanKind, function: Callable[..., Iterator[T]]
) -> Callable[..., Iterator[T]]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[T]:
        return _spanned(name, kind, function(*args, **kwargs))

    return wrapper


def _spanned(name: str, kind: SpanKind, items: Iterator[T]) -> Iterator[T]:
    tracer = current_tracer()  # of whoever iterates, at the first item
    if tracer is None:
        yield from items
        return
    span = tracer.start_span(name, kind=kind)
    # The span is made current around each step only, never across a yield: the
    # consumer's own context must not change while it holds an item.
    context = call_context(span, tracer)
    try:
        while True:
            token = enter(context)
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                leave(token)
            yield item
    except GeneratorExit:
        raise
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
        span.end()
