"""Recorded calls become ordinary SDK spans: ids, parents, attributes, errors, sampling."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from quiver_server.telemetry.hooks import annotate, traced
from quiver_server.telemetry.recorder import SpanRecorder, current_span_id
from quiver_server.telemetry.scope import Scope, enter_scope, exit_scope


def recorder(sampler: object = None) -> tuple[SpanRecorder, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return SpanRecorder(provider, "quiver_server", "0.1.0"), exporter


@traced("outer")
def outer(fail: bool) -> str:
    annotate(stage="outer")
    return inner(fail)


@traced("inner")
def inner(fail: bool) -> str:
    annotate(stage="inner")
    if fail:
        raise ValueError("bad input")
    return trace.get_current_span().get_span_context().trace_id.to_bytes(16, "big").hex()


def run(rec: SpanRecorder, fail: bool = False) -> tuple[int, str | None]:
    call = rec.start("call", SpanKind.SERVER, None, {"a": 1})
    token = enter_scope(Scope(call))
    tokens = call.activate()
    seen = None
    try:
        seen = outer(fail)
    except ValueError as exc:
        call.fail(exc)
    finally:
        type(call).deactivate(tokens)
        exit_scope(token)
        call.finish()
        call.finish()  # twice is harmless
    return call.trace_id, seen


def test_children_nest_and_become_sdk_spans() -> None:
    rec, exporter = recorder()
    trace_id, seen = run(rec)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"call", "outer", "inner"}
    assert seen == trace_id.to_bytes(16, "big").hex()  # the OTel context had the call's ids
    call, out, inn = spans["call"], spans["outer"], spans["inner"]
    assert call.parent is None and call.kind is SpanKind.SERVER
    assert out.parent is not None and out.parent.span_id == call.context.span_id
    assert inn.parent is not None and inn.parent.span_id == out.context.span_id
    assert {s.context.trace_id for s in spans.values()} == {trace_id}
    assert out.attributes == {"quiver.stage": "outer"}
    assert inn.attributes == {"quiver.stage": "inner"}
    assert call.start_time <= out.start_time <= inn.start_time  # type: ignore[operator]
    assert inn.end_time <= out.end_time <= call.end_time  # type: ignore[operator]
    assert current_span_id() == 0


def test_a_failure_is_recorded_where_it_happened() -> None:
    rec, exporter = recorder()
    run(rec, fail=True)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("inner", "outer", "call"):
        assert spans[name].status.status_code is StatusCode.ERROR
        [event] = spans[name].events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "ValueError"
        assert "bad input" in str(event.attributes["exception.message"])


def test_unsampled_calls_record_nothing_but_keep_ids() -> None:
    rec, exporter = recorder(sampler=ALWAYS_OFF)
    trace_id, seen = run(rec)
    assert exporter.get_finished_spans() == ()
    assert trace_id and seen == trace_id.to_bytes(16, "big").hex()


def test_annotate_outside_a_call_does_nothing() -> None:
    annotate(anything=1)


@pytest.mark.parametrize("parent_sampled", [True, False])
def test_remote_parent_decides(parent_sampled: bool) -> None:
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    rec, exporter = recorder()
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(int(parent_sampled)))
    call = rec.start("call", SpanKind.SERVER, trace.set_span_in_context(NonRecordingSpan(remote)))
    call.finish()
    assert call.trace_id == 0xABC
    assert len(exporter.get_finished_spans()) == int(parent_sampled)
