"""The telemetry of a materialization run, owned by its entry point (the CLI, a CronJob).

    results = run_materialization(config, lambda progress: materialize_range(
        config, start, end, progress=progress))

The run gets a ``quiver.materialize`` span and one ``quiver.materialize.view``
child per view (window, rows read, entities, rows written and superseded),
made from the materialization's progress events; each view's rows, duration and
end go to the `quiver_materialize_last_run_*` gauges.
When the runner sets telemetry up itself (tracing on, or a Pushgateway
configured), it pushes the metrics to the Pushgateway at the end and shuts the
telemetry down, flushing the spans. Library calls of `materialize_range` report
nothing: only this runner does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import structlog
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from quiver_server.config import QuiverConfig
from quiver_server.materialize import MaterializeProgress, ProgressCallback
from quiver_server.telemetry.metrics import MaterializeMetrics
from quiver_server.telemetry.setup import Telemetry, setup_telemetry
from quiver_server.telemetry.spans import call_context, enter, leave
from quiver_server.telemetry.tracing import tracing_enabled

log = structlog.get_logger(__name__)

T = TypeVar("T")
PUSH_JOB = "quiver-materialize"


class _ViewSpans:
    """Per-view spans and metrics from progress events; passes events on to `draw`."""

    def __init__(
        self, tracer: Tracer | None, metrics: MaterializeMetrics | None,
        draw: ProgressCallback | None,
    ) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.draw = draw
        self.open: dict[str, Span] = {}

    def __call__(self, event: MaterializeProgress) -> None:
        if event.phase == "start" and self.tracer is not None:
            self.open[event.view] = self.tracer.start_span("quiver.materialize.view")
        elif event.phase == "done" and event.result is not None:
            result = event.result
            span = self.open.pop(event.view, None)
            if span is not None:
                span.set_attributes({
                    "quiver.feature_view": result.view,
                    "quiver.window.start": result.start.isoformat() if result.start else "",
                    "quiver.window.end": result.end.isoformat(),
                    "quiver.rows_read": result.rows_read,
                    "quiver.entities": result.entities,
                    "quiver.rows_written": result.rows_written,
                    "quiver.rows_superseded": result.superseded,
                })
                span.end()
            if self.metrics is not None:
                self.metrics.record(
                    result.view, result.rows_written, result.superseded, result.seconds
                )
        if self.draw is not None:
            self.draw(event)

    def fail(self, exc: BaseException) -> None:
        """End the spans of views a failure interrupted."""
        for view, span in self.open.items():
            span.set_attribute("quiver.feature_view", view)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()
        self.open.clear()


def run_materialization(
    config: QuiverConfig,
    work: Callable[[ProgressCallback], T],
    *,
    telemetry: Telemetry | None = None,
    draw: ProgressCallback | None = None,
) -> T:
    """Run `work` (a materialization given a progress callback) with the run's telemetry.

    Args:
        config: The feature repo's configuration (telemetry section, project).
        work: Calls `materialize_range` / `materialize_incremental` with the callback.
        telemetry: Report here; by default set up from `config` when tracing is
            on or a Pushgateway is configured (and then pushed and shut down at the end).
        draw: Also receives every progress event (the CLI draws them).
    """
    own = telemetry is None and (
        tracing_enabled(config.telemetry.tracing) or bool(config.telemetry.metrics.pushgateway)
    )
    if own:
        telemetry = setup_telemetry(config, "materialize")
    tracer = telemetry.tracer if telemetry is not None else None
    metrics = telemetry.metrics.materialize if telemetry and telemetry.metrics else None
    views = _ViewSpans(tracer, metrics, draw)
    span = None
    token = None
    if tracer is not None:
        span = tracer.start_span("quiver.materialize", attributes={"quiver.project": config.project})
        token = enter(call_context(span, tracer))
    try:
        return work(views)
    except BaseException as exc:
        views.fail(exc)
        if span is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        if token is not None:
            leave(token)
        if span is not None:
            span.end()
        if own and telemetry is not None:
            _finish(telemetry, config)


def _finish(telemetry: Telemetry, config: QuiverConfig) -> None:
    try:
        telemetry.push_metrics(PUSH_JOB, {"project": config.project})
    except OSError as exc:
        log.warning("metrics push failed", error=str(exc))
    telemetry.shutdown()
