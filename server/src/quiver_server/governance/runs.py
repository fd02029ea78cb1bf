"""Materialization runs and their windows, for lineage.

The registry keeps each view's watermark (how far it was materialized); this
log keeps every run: the view, the window of event time it copied, the rows
read and written, and when it finished. One JSON line per view and run,
appended to ``governance/materializations.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Protocol

from quiver.registry.v1 import governance_pb2 as gpb
from quiver_server.governance.files import append_line, read_lines
from quiver_server.governance.paths import GovernancePaths


class RunOutcome(Protocol):
    """What a materialization run reports per view (`ViewMaterialization`)."""

    @property
    def view(self) -> str: ...
    @property
    def start(self) -> datetime | None: ...
    @property
    def end(self) -> datetime: ...
    @property
    def rows_read(self) -> int: ...
    @property
    def rows_written(self) -> int: ...


def record_runs(paths: GovernancePaths, outcomes: Iterable[RunOutcome]) -> None:
    """Append one line per view that a materialization run copied."""
    finished = datetime.now(UTC).isoformat()
    for outcome in outcomes:
        append_line(paths.materializations, {
            "view": outcome.view,
            "start": outcome.start.isoformat() if outcome.start else None,
            "end": outcome.end.isoformat(),
            "rows_read": outcome.rows_read,
            "rows_written": outcome.rows_written,
            "finished_at": finished,
        })


def read_runs(paths: GovernancePaths, view: str = "") -> list[gpb.MaterializationRun]:
    """Recorded runs (of one view, or all), oldest first."""
    runs = []
    for record in read_lines(paths.materializations):
        if view and record.get("view") != view:
            continue
        run = gpb.MaterializationRun(
            feature_view=str(record.get("view", "")),
            rows_read=int(record.get("rows_read", 0)),
            rows_written=int(record.get("rows_written", 0)),
        )
        for field in ("start", "end", "finished_at"):
            value = record.get(field)
            if value:
                getattr(run, field).FromDatetime(datetime.fromisoformat(value))
        runs.append(run)
    return runs
