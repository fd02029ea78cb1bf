"""Materialization run by its job runner gets a span per run and per view, and counts its rows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from quiver.errors import FailedPreconditionError
from quiver_server.config import QuiverConfig
from quiver_server.materialize import MaterializeProgress, materialize_range
from quiver_server.telemetry import Metrics, Telemetry
from quiver_server.telemetry.job import run_materialization

VIEWS = {"user_transaction_stats", "user_profile", "merchant_stats"}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(exporter: InMemorySpanExporter) -> Telemetry:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry("materialize", tracer_provider=provider,
                     metrics=Metrics.for_component("materialize"))


def test_run_and_view_spans_with_row_counts(
    applied_demo: QuiverConfig, telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    end = datetime.now(UTC) + timedelta(seconds=1)
    drawn: list[MaterializeProgress] = []
    results = run_materialization(
        applied_demo,
        lambda progress: materialize_range(
            applied_demo, end - timedelta(days=30), end, progress=progress
        ),
        telemetry=telemetry, draw=drawn.append,
    )

    spans = exporter.get_finished_spans()
    [run] = [s for s in spans if s.name == "quiver.materialize"]
    views = [s for s in spans if s.name == "quiver.materialize.view"]
    assert run.parent is None and run.attributes == {"quiver.project": applied_demo.project}
    assert {s.attributes["quiver.feature_view"] for s in views} == VIEWS  # type: ignore[index]
    for span in views:
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert span.context.trace_id == run.context.trace_id
    by_view = {r.view: r for r in results}
    for span in views:
        attributes = span.attributes or {}
        result = by_view[str(attributes["quiver.feature_view"])]
        assert attributes["quiver.rows_read"] == result.rows_read > 0
        assert attributes["quiver.rows_written"] == result.rows_written
        assert attributes["quiver.window.end"] == end.isoformat()
    # The drawing callback sees every event the telemetry saw.
    assert {e.result for e in drawn if e.phase == "done"} == set(results)

    assert telemetry.metrics is not None
    registry = telemetry.metrics.registry
    for result in results:
        written = registry.get_sample_value(
            "quiver_materialize_last_run_rows", {"feature_view": result.view, "result": "written"})
        assert written == result.rows_written
        assert registry.get_sample_value(
            "quiver_materialize_last_run_duration_seconds", {"feature_view": result.view}
        ) == pytest.approx(result.seconds)
        finished = registry.get_sample_value(
            "quiver_materialize_last_run_finished_timestamp_seconds", {"feature_view": result.view})
        assert finished is not None and abs(finished - time.time()) < 600


def test_a_failed_run_ends_its_spans_as_errors(
    applied_demo: QuiverConfig, telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    def fail(progress: object) -> None:
        raise FailedPreconditionError("history missing")

    with pytest.raises(FailedPreconditionError):
        run_materialization(applied_demo, fail, telemetry=telemetry)
    [run] = exporter.get_finished_spans()
    assert run.name == "quiver.materialize" and run.status.status_code is StatusCode.ERROR
    assert [e.name for e in run.events] == ["exception"]


def test_tracing_off_and_no_pushgateway_means_no_telemetry(applied_demo: QuiverConfig) -> None:
    end = datetime.now(UTC) + timedelta(seconds=1)
    results = run_materialization(applied_demo, lambda progress: materialize_range(
        applied_demo, end - timedelta(days=30), end, progress=progress))
    assert {r.view for r in results} == VIEWS


def test_a_run_that_sets_up_telemetry_runs_with_it(applied_demo: QuiverConfig) -> None:
    # Tracing on in the config with a console exporter: the runner sets telemetry
    # up for the run and shuts it down (flushing) at the end.
    config = applied_demo.model_copy(update={"telemetry": applied_demo.telemetry.model_copy(
        update={"tracing": applied_demo.telemetry.tracing.model_copy(
            update={"enabled": True, "exporter": "console"})})})
    end = datetime.now(UTC) + timedelta(seconds=1)
    results = run_materialization(config, lambda progress: materialize_range(
        config, end - timedelta(days=30), end, progress=progress))
    assert {r.view for r in results} == VIEWS
