"""Materialization gets a span per run and per view, and counts its rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from quiver_server.config import QuiverConfig
from quiver_server.materialize import materialize_range
from quiver_server.telemetry import Metrics, Telemetry, install_telemetry, installed_telemetry

VIEWS = {"user_transaction_stats", "user_profile", "merchant_stats"}


@pytest.fixture
def installed() -> Iterator[tuple[Telemetry, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry("materialize", tracer_provider=provider,
                          metrics=Metrics.for_component("materialize"))
    install_telemetry(telemetry)
    yield telemetry, exporter
    install_telemetry(None)


def test_run_and_view_spans_with_row_counts(
    applied_demo: QuiverConfig, installed: tuple[Telemetry, InMemorySpanExporter]
) -> None:
    telemetry, exporter = installed
    end = datetime.now(UTC) + timedelta(seconds=1)
    results = materialize_range(applied_demo, end - timedelta(days=30), end, progress=False)

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


def test_nothing_installed_and_tracing_off_means_no_telemetry(applied_demo: QuiverConfig) -> None:
    end = datetime.now(UTC) + timedelta(seconds=1)
    results = materialize_range(applied_demo, end - timedelta(days=30), end, progress=False)
    assert {r.view for r in results} == VIEWS
    assert installed_telemetry() is None


def test_a_run_that_sets_up_telemetry_takes_it_down(applied_demo: QuiverConfig) -> None:
    # Tracing on in the config with a console exporter: the run installs telemetry
    # for itself and must leave none behind for the next run to mistake as its own.
    config = applied_demo.model_copy(update={"telemetry": applied_demo.telemetry.model_copy(
        update={"tracing": applied_demo.telemetry.tracing.model_copy(
            update={"enabled": True, "exporter": "console"})})})
    end = datetime.now(UTC) + timedelta(seconds=1)
    materialize_range(config, end - timedelta(days=30), end, progress=False)
    assert installed_telemetry() is None
