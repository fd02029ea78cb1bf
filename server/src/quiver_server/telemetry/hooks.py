"""Decorators that put telemetry on business functions without code inside them.

Each one costs a context-variable lookup when the call is not traced or measured:

- `traced(name)`: a child span around any function.
- `annotate(**attributes)`: attributes on the current span (e.g. a plan's partition
  count), where a decorator cannot see the value.
- `traced_encoding`: the response-encoding span of GetOnlineFeatures, and the
  feature-status counts (read from the graded columns before they become protobuf,
  which is ten times cheaper than reading them back from the response).
- `traced_push`: a span for a push, with its view, row count and target.
- `traced_materialization` / `traced_view_materialization`: a span for a
  materialization run and one per view, with rows and timings; the last run's
  rows, duration and end also go to the `quiver_materialize_last_run_*` gauges.
  Run outside a server (the CLI, a CronJob), the first one sets telemetry up from
  the config and pushes metrics to the configured Pushgateway at the end.
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from quiver.serving.v1 import serving_service_pb2 as pb
from quiver_server.config import QuiverConfig
from quiver_server.telemetry.metrics import OnlineMetrics
from quiver_server.telemetry.recorder import RecordedCall
from quiver_server.telemetry.scope import Scope, current_scope, enter_scope, exit_scope, traced
from quiver_server.telemetry.setup import (
    Telemetry,
    install_telemetry,
    installed_telemetry,
    setup_telemetry,
)
from quiver_server.telemetry.tracing import tracing_enabled

__all__ = [
    "annotate",
    "traced",
    "traced_encoding",
    "traced_materialization",
    "traced_push",
    "traced_view_materialization",
]

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A")

PRESENT: int = pb.FEATURE_STATUS_PRESENT
_STATUS_NAMES = {
    int(value): name.removeprefix("FEATURE_STATUS_") for name, value in pb.FeatureStatus.items()
}


class _Graded(Protocol):
    @property
    def statuses(self) -> list[int]: ...


class _ViewOutcome(Protocol):
    @property
    def view(self) -> str: ...
    @property
    def start(self) -> datetime | None: ...
    @property
    def end(self) -> datetime: ...
    @property
    def rows_read(self) -> int: ...
    @property
    def entities(self) -> int: ...
    @property
    def rows_written(self) -> int: ...
    @property
    def superseded(self) -> int: ...
    @property
    def seconds(self) -> float: ...


Cols = TypeVar("Cols", bound=Sequence[_Graded])
Outcome = TypeVar("Outcome", bound=_ViewOutcome)


def annotate(**attributes: str | int | float | bool) -> None:
    """Set attributes on the current recorded span; a no-op outside a sampled call.

    Names get a ``quiver.`` prefix: ``annotate(partitions=4)`` sets ``quiver.partitions``.
    """
    scope = current_scope()
    call = scope.call if scope is not None else None
    if call is None or not call.sampled:
        return
    target = call.current_child() or call
    for key, value in attributes.items():
        target.set_attribute(f"quiver.{key}", value)


def traced_encoding(function: Callable[[A, Cols, int], R]) -> Callable[[A, Cols, int], R]:
    """For ``encode(names, columns, entity_count)``: span ``quiver.response.encode``, status counts."""

    @functools.wraps(function)
    def wrapper(names: A, columns: Cols, count: int) -> R:
        scope = current_scope()
        if scope is None:
            return function(names, columns, count)
        if scope.online is not None:
            count_statuses(scope.online, columns)
        call = scope.call
        if call is None or not call.sampled:
            return function(names, columns, count)
        child = call.begin("quiver.response.encode", attributes={
            "quiver.entities": count, "quiver.features": len(columns),
        })
        try:
            return function(names, columns, count)
        except BaseException as exc:
            child.fail(exc)
            raise
        finally:
            call.end(child)

    return wrapper


def count_statuses(metrics: OnlineMetrics, columns: Sequence[_Graded]) -> None:
    present = 0
    others: Counter[int] = Counter()
    for column in columns:
        statuses = column.statuses
        found = statuses.count(PRESENT)
        present += found
        if found != len(statuses):
            others.update(statuses)
    others.pop(PRESENT, None)
    if present:
        metrics.status_child(PRESENT, _STATUS_NAMES).inc(present)
    for status, n in others.items():
        metrics.status_child(status, _STATUS_NAMES).inc(n)


def traced_push(function: Callable[P, R]) -> Callable[P, R]:
    """For ``push(store, table, offline_root, rows, to)``: span ``quiver.push``."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        scope = current_scope()
        call = scope.call if scope is not None else None
        if call is None or not call.sampled:
            return function(*args, **kwargs)
        given = signature.bind(*args, **kwargs).arguments
        attributes: dict[str, Any] = {}
        table, rows, to = given.get("table"), given.get("rows"), given.get("to")
        if table is not None:
            attributes["quiver.feature_view"] = str(getattr(table, "name", table))
        if rows is not None and hasattr(rows, "num_rows"):
            attributes["quiver.rows"] = int(rows.num_rows)
        if to is not None:
            attributes["quiver.push_target"] = str(getattr(to, "value", to))
        child = call.begin("quiver.push", attributes=attributes)
        try:
            result = function(*args, **kwargs)
        except BaseException as exc:
            child.fail(exc)
            raise
        finally:
            call.end(child)
        superseded = getattr(result, "superseded", None)
        if isinstance(superseded, int):
            child.set_attribute("quiver.rows_superseded", superseded)
        return result

    return wrapper


def traced_materialization(
    function: Callable[Concatenate[QuiverConfig, P], R],
) -> Callable[Concatenate[QuiverConfig, P], R]:
    """For a materialization run taking the config first: span ``quiver.materialize``."""

    @functools.wraps(function)
    def wrapper(config: QuiverConfig, *args: P.args, **kwargs: P.kwargs) -> R:
        telemetry = installed_telemetry()
        own = False
        if telemetry is None and (
            tracing_enabled(config.telemetry.tracing) or config.telemetry.metrics.pushgateway
        ):
            telemetry = setup_telemetry(config, "materialize", install=True)
            own = True
        if telemetry is None or (telemetry.recorder is None and telemetry.metrics is None):
            return function(config, *args, **kwargs)
        call = None
        if telemetry.recorder is not None:
            call = telemetry.recorder.start(
                "quiver.materialize", SpanKind.INTERNAL, otel_context.get_current(),
                {"quiver.project": config.project},
            )
        token = enter_scope(Scope(call))
        tokens = call.activate() if call is not None else None
        try:
            return function(config, *args, **kwargs)
        except BaseException as exc:
            if call is not None:
                call.fail(exc)
            raise
        finally:
            if call is not None and tokens is not None:
                RecordedCall.deactivate(tokens)
                call.finish()
            exit_scope(token)
            if own:
                _finish_job(telemetry, config)

    return cast("Callable[Concatenate[QuiverConfig, P], R]", wrapper)


def _finish_job(telemetry: Telemetry, config: QuiverConfig) -> None:
    try:
        telemetry.push_metrics("quiver-materialize", {"project": config.project})
    except OSError as exc:
        import structlog

        structlog.get_logger(__name__).warning("metrics push failed", error=str(exc))
    telemetry.force_flush()
    # The run set its telemetry up, so the run takes it down: a later run in the
    # same process sets up (and pushes) its own.
    install_telemetry(None)


def traced_view_materialization(function: Callable[P, Outcome]) -> Callable[P, Outcome]:
    """For the function materializing one view: span ``quiver.materialize.view`` and row counts."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Outcome:
        telemetry = installed_telemetry()
        scope = current_scope()
        call = scope.call if scope is not None else None
        if call is None or not call.sampled:
            outcome = function(*args, **kwargs)
        else:
            child = call.begin("quiver.materialize.view")
            try:
                outcome = function(*args, **kwargs)
            except BaseException as exc:
                child.fail(exc)
                raise
            finally:
                call.end(child)
            child.attributes.update({
                "quiver.feature_view": outcome.view,
                "quiver.window.start": outcome.start.isoformat() if outcome.start else "",
                "quiver.window.end": outcome.end.isoformat(),
                "quiver.rows_read": outcome.rows_read,
                "quiver.entities": outcome.entities,
                "quiver.rows_written": outcome.rows_written,
                "quiver.rows_superseded": outcome.superseded,
            })
        metrics = telemetry.metrics.materialize if telemetry and telemetry.metrics else None
        if metrics is not None:
            metrics.record(outcome.view, outcome.rows_written, outcome.superseded, outcome.seconds)
        return outcome

    return wrapper
