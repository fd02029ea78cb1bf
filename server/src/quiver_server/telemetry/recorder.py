"""Spans of one call, recorded as plain timings and handed over finished.

A live OpenTelemetry SDK span costs 15-20 us to start and end in CPython
(attribute validation, locks, span-processor callbacks); a lookup has four of
them and takes under half a millisecond. So on Quiver's hot paths a call's
spans are recorded as a few numbers while the call runs and turned into SDK
`ReadableSpan`s only when it ends, then given to the provider's span
processors as if the SDK had made them: exporters, batching, sampling and the
resource are the SDK's own, at about a quarter of the cost.

What differs from live spans: span processors see these spans at `on_end`
only (never `on_start`), and the SDK's span limits are not applied (Quiver
sets a handful of small attributes). During the call, the OpenTelemetry
context holds a non-recording span with the call's ids, so trace context still
propagates and libraries' own spans nest under the call's span.
"""

from __future__ import annotations

import time
import traceback
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)

# The span id of the recorded span that is current (a child, or the call's own).
_CURRENT: ContextVar[int] = ContextVar("quiver_current_span", default=0)


def current_span_id() -> int:
    return _CURRENT.get()


class SpanRecorder:
    """Starts recorded calls for one TracerProvider."""

    def __init__(self, provider: TracerProvider, scope: str, version: str) -> None:
        self.provider = provider
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.resource = provider.resource
        self.scope = InstrumentationScope(scope, version)
        # Where finished spans go: the provider's span processors. This is the
        # SDK's private attribute (the SDK version is pinned); without it the
        # recorded span ids could not be kept, so refuse to start at all.
        processor = getattr(provider, "_active_span_processor", None)
        if processor is None:
            raise RuntimeError(
                "this opentelemetry-sdk has no TracerProvider._active_span_processor; "
                "use the version pinned in pyproject.toml"
            )
        self.processor = processor

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: Context | None,
        attributes: dict[str, Any] | None = None,
    ) -> RecordedCall:
        """A call with its own span; `parent` is the extracted or current context."""
        return RecordedCall(self, name, kind, parent, attributes)


class _Child:
    __slots__ = ("attributes", "end", "events", "kind", "name", "parent_id", "span_id", "start",
                 "status", "token")

    def __init__(self, name: str, span_id: int, parent_id: int, kind: SpanKind,
                 attributes: dict[str, Any] | None) -> None:
        self.name = name
        self.span_id = span_id
        self.parent_id = parent_id
        self.kind = kind
        self.attributes = attributes if attributes is not None else {}
        self.start = time.time_ns()
        self.end = 0
        self.status = _UNSET
        self.events: list[Event] | None = None
        self.token: Token[int] | None = None

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def fail(self, exc: BaseException) -> None:
        self.status = Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        if self.events is None:
            self.events = []
        self.events.append(exception_event(exc))


class RecordedCall:
    """One call's own span and its children, recorded while the call runs.

    Not sampled, it records nothing but still carries ids, so log lines and
    outgoing trace context stay correct.
    """

    def __init__(
        self,
        recorder: SpanRecorder,
        name: str,
        kind: SpanKind,
        parent: Context | None,
        attributes: dict[str, Any] | None,
    ) -> None:
        self.recorder = recorder
        self.name = name
        self.kind = kind
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.start_time = time.time_ns()
        self.status = _UNSET
        self.children: list[_Child] = []
        self._open: dict[int, _Child] = {}
        self.events: list[Event] | None = None
        parent_span = trace.get_current_span(parent).get_span_context()
        self.parent = parent_span if parent_span.is_valid else None
        if self.parent is not None:
            self.trace_id = self.parent.trace_id
        else:
            self.trace_id = recorder.ids.generate_trace_id()
        self.span_id = recorder.ids.generate_span_id()
        decision = recorder.sampler.should_sample(parent, self.trace_id, name, kind, self.attributes)
        self.sampled = decision.decision is Decision.RECORD_AND_SAMPLE
        if self.sampled and decision.attributes:
            self.attributes.update(decision.attributes)
        self.span_context = SpanContext(
            self.trace_id, self.span_id, is_remote=False,
            trace_flags=_SAMPLED if self.sampled else _NOT_SAMPLED,
            trace_state=decision.trace_state,
        )
        self.context = trace.set_span_in_context(NonRecordingSpan(self.span_context), parent)
        self._ended = False

    # -- the call's own span --------------------------------------------------------

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_status(self, status: Status) -> None:
        self.status = status

    def fail(self, exc: BaseException) -> None:
        self.status = Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        if self.events is None:
            self.events = []
        self.events.append(exception_event(exc))

    def activate(self) -> tuple[Token[int], object]:
        """Make this call current (for logs and nested spans); undo with `deactivate`."""
        return _CURRENT.set(self.span_id), otel_context.attach(self.context)

    @staticmethod
    def deactivate(tokens: tuple[Token[int], object]) -> None:
        otel_context.detach(tokens[1])  # type: ignore[arg-type]
        _CURRENT.reset(tokens[0])

    # -- children ---------------------------------------------------------------------

    def begin(self, name: str, kind: SpanKind = SpanKind.INTERNAL,
              attributes: dict[str, Any] | None = None) -> _Child:
        """Start a child of the current recorded span; end it with `end`."""
        child = _Child(name, self.recorder.ids.generate_span_id(),
                       _CURRENT.get() or self.span_id, kind, attributes)
        child.token = _CURRENT.set(child.span_id)
        self._open[child.span_id] = child
        return child

    def current_child(self) -> _Child | None:
        """The innermost child span still open in this context, if any."""
        current = _CURRENT.get()
        if current == self.span_id:
            return None
        return self._open.get(current)

    def end(self, child: _Child) -> None:
        child.end = time.time_ns()
        self._open.pop(child.span_id, None)
        if child.token is not None:
            _CURRENT.reset(child.token)
            child.token = None
        self.children.append(child)

    # -- handing over -----------------------------------------------------------------

    def finish(self) -> None:
        """End the call's span and give every recorded span to the span processors."""
        if self._ended:
            return
        self._ended = True
        if not self.sampled:
            return
        end_time = time.time_ns()
        recorder = self.recorder
        spans = [self._readable(child) for child in self.children]
        spans.append(ReadableSpan(
            name=self.name, context=self.span_context, parent=self.parent,
            resource=recorder.resource, attributes=self.attributes, events=self.events or (),
            kind=self.kind, status=self.status, start_time=self.start_time, end_time=end_time,
            instrumentation_scope=recorder.scope,
        ))
        for span in spans:
            recorder.processor.on_end(span)

    def _readable(self, child: _Child) -> ReadableSpan:
        parent = self.span_context
        if child.parent_id != self.span_id:  # a grandchild
            parent = SpanContext(self.trace_id, child.parent_id, is_remote=False,
                                 trace_flags=_SAMPLED, trace_state=self.span_context.trace_state)
        context = SpanContext(self.trace_id, child.span_id, is_remote=False,
                              trace_flags=_SAMPLED, trace_state=self.span_context.trace_state)
        return ReadableSpan(
            name=child.name, context=context, parent=parent, resource=self.recorder.resource,
            attributes=child.attributes, events=child.events or (), kind=child.kind,
            status=child.status, start_time=child.start, end_time=child.end or time.time_ns(),
            instrumentation_scope=self.recorder.scope,
        )


def exception_event(exc: BaseException) -> Event:
    """The `exception` span event of the OpenTelemetry conventions."""
    return Event("exception", {
        "exception.type": type(exc).__qualname__,
        "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(exc)),
    })

