"""`quiver monitor`: compare each feature's current window with its reference.

Current: the last `monitoring.current_window_seconds`, ending now, from one
of three sources:

- ``online`` (default): what materialization and push wrote online;
- ``serving``: the sampled values the servers answered with;
- ``history``: the offline history itself, profiled on demand.

Reference: ``trailing`` (the same source over the
`monitoring.reference_window_seconds` before the current window) or
``training_set:NAME`` (the profile stored when that training set was pulled).

A stored profile belongs to the period its window ends in; a window still
open (it ends after now) is current. The result is
stored as the latest run (`ProfileStore.write_run`), which the servers export
as Prometheus metrics, and returned with what the HTML report draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from quiver import FeatureView, ValueType
from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.config import QuiverConfig
from quiver_server.monitoring.drift import (
    compare,
    distributions,
    jensen_shannon,
    psi,
    resolve_thresholds,
)
from quiver_server.monitoring.history import profile_history
from quiver_server.monitoring.profile import ViewProfile, merge_profiles
from quiver_server.monitoring.storage import ProfileStore, Scan
from quiver_server.monitoring.summary import FeatureSummary
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore

__all__ = ["CURRENT_SOURCES", "FeatureReport", "MonitorResult", "TrendPoint", "run_monitor"]

log = structlog.get_logger(__name__)

CURRENT_SOURCES: dict[str, tuple[str, ...]] = {
    "online": ("materialize", "push"),
    "serving": ("serving",),
    "history": ("history",),
}
WRITE_SOURCES = ("materialize", "push")
# Windows drawn in a feature's trend.
MAX_TREND_POINTS = 48


@dataclass(frozen=True)
class TrendPoint:
    """Drift of one window against the reference."""

    window_start: datetime
    window_end: datetime
    psi: float
    jensen_shannon: float
    null_rate: float
    count: int


@dataclass
class FeatureReport:
    """Everything known about one feature's comparison."""

    drift: pb.FeatureDrift
    dtype: ValueType
    reference: FeatureSummary | None
    current: FeatureSummary | None
    trend: list[TrendPoint] = field(default_factory=list)

    @property
    def severity(self) -> float:
        """The largest score-to-threshold ratio; -1 when nothing could be compared."""
        d = self.drift
        if d.status not in (pb.DRIFT_STATUS_OK, pb.DRIFT_STATUS_DRIFT):
            return -1.0
        ratios = [
            d.psi / d.psi_threshold if d.psi_threshold else 0.0,
            d.jensen_shannon / d.jensen_shannon_threshold if d.jensen_shannon_threshold else 0.0,
            abs(d.current_null_rate - d.reference_null_rate) / d.null_rate_threshold
            if d.null_rate_threshold else 0.0,
        ]
        return max(ratios)


@dataclass
class MonitorResult:
    run: pb.MonitorRun
    features: list[FeatureReport]

    @property
    def drifted(self) -> list[FeatureReport]:
        return [f for f in self.features if f.drift.status == pb.DRIFT_STATUS_DRIFT]


def run_monitor(
    config: QuiverConfig,
    *,
    current: str = "online",
    reference: str | None = None,
    views: Sequence[str] | None = None,
    now: datetime | None = None,
    store: bool = True,
) -> MonitorResult:
    """Compute drift and freshness for every view (or the named ones).

    Args:
        config: The repo's configuration (`monitoring` section for windows).
        current: online, serving or history.
        reference: trailing or training_set:NAME; default `monitoring.reference`.
        views: Feature views to check; default all.
        now: End of the current window; default now.
        store: Keep the result as the latest run (what the servers export).

    Raises:
        InvalidArgumentError: an unknown source, reference or view.
        FailedPreconditionError: nothing applied yet.
    """
    settings = config.monitoring
    if current not in CURRENT_SOURCES:
        raise InvalidArgumentError.for_field(
            "current", f"unknown source {current!r}; allowed: {', '.join(CURRENT_SOURCES)}"
        )
    reference = reference or settings.reference
    training_set = _training_set_name(reference)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    current_width = timedelta(seconds=settings.current_window_seconds)
    reference_width = timedelta(seconds=settings.reference_window_seconds)
    current_start = now - current_width
    snapshot = RegistryStore(config.registry_path).latest()
    selected = _select(snapshot, views)
    profiles = ProfileStore(config.offline_root)
    profiles.ensure()

    run = pb.MonitorRun(
        current=current,
        reference=reference if training_set else
        f"trailing {_span(reference_width)} of {current}",
    )
    run.ran_at.FromDatetime(datetime.now(UTC))
    run.current_start.FromDatetime(current_start)
    run.current_end.FromDatetime(now)
    reports: list[FeatureReport] = []
    for view in selected:
        types = {f.name: f.dtype for f in view.schema}
        windows: list[ViewProfile]
        if current == "history":
            buckets = max(1, round(reference_width / current_width)) + 1
            try:
                windows = profile_history(config.offline_root, view, now, current_width, buckets)
            except FailedPreconditionError as exc:
                # One view without history does not stop the others.
                run.skipped_files[view.source.path] = exc.message
                windows = []
            windows.reverse()  # oldest first
            current_profile = windows[-1] if windows and windows[-1].rows else None
            trailing = merge_profiles(p for p in windows[:-1] if p.rows)
        else:
            sources = CURRENT_SOURCES[current]
            scan = profiles.scan(view.name, sources, types, after=current_start - reference_width)
            _note_skipped(run, scan)
            # A window still open (serving, push) ends after now and counts as current.
            windows = sorted((p for p in scan.profiles if p.window_start < now),
                             key=lambda p: (p.window_end, p.window_start))
            current_profile = merge_profiles(p for p in windows if p.window_end > current_start)
            trailing = merge_profiles(p for p in windows if p.window_end <= current_start)
        if training_set:
            scan = profiles.training_set(view.name, training_set, types)
            _note_skipped(run, scan)
            baseline = merge_profiles(scan.profiles)
        else:
            baseline = trailing
        for feature in view.schema:
            thresholds = resolve_thresholds(feature.drift, view.drift)
            ref = baseline.features.get(feature.name) if baseline else None
            cur = current_profile.features.get(feature.name) if current_profile else None
            drift = compare(view.name, ref, cur, thresholds)
            drift.feature = feature.name
            run.features.append(drift)
            reports.append(FeatureReport(drift, feature.dtype, ref, cur,
                                         _trend(windows, feature.name, ref)))
        freshness = run.views.add(feature_view=view.name, ttl_seconds=view.ttl_seconds)
        newest = _newest_write(profiles, view, types)
        if newest is not None:
            freshness.newest_event.FromDatetime(newest)
    reports.sort(key=lambda r: (-r.severity, r.drift.feature_view, r.drift.feature))
    if run.skipped_files:
        for path, why in run.skipped_files.items():
            log.warning("profile file skipped", path=path, reason=why)
    if store:
        profiles.write_run(run)
    return MonitorResult(run, reports)


def _training_set_name(reference: str) -> str | None:
    if reference == "trailing":
        return None
    kind, sep, name = reference.partition(":")
    if kind != "training_set" or not sep or not name:
        raise InvalidArgumentError.for_field(
            "reference", f"{reference!r}: use trailing or training_set:NAME"
        )
    return name


def _select(snapshot: Snapshot, names: Sequence[str] | None) -> list[FeatureView]:
    if not names:
        return list(snapshot.feature_views.values())
    return [snapshot.feature_view(name) for name in dict.fromkeys(names)]


def _note_skipped(run: pb.MonitorRun, scan: Scan) -> None:
    for path, why in scan.skipped.items():
        run.skipped_files[path] = why


def _trend(windows: list[ViewProfile], feature: str, reference: FeatureSummary | None) -> list[TrendPoint]:
    """Each window's drift against the reference, oldest first, windows of equal bounds merged."""
    grouped: dict[tuple[datetime, datetime], FeatureSummary] = {}
    for profile in windows:
        summary = profile.features.get(feature)
        if summary is None or not summary.count:
            continue
        key = (profile.window_start, profile.window_end)
        merged = grouped.get(key)
        if merged is None:
            merged = grouped[key] = FeatureSummary(summary.name, summary.dtype)
        merged.merge(summary)
    points = []
    for (start, end), summary in sorted(grouped.items(), key=lambda kv: kv[0][1])[-MAX_TREND_POINTS:]:
        binned = distributions(reference, summary) if reference is not None and reference.count else None
        points.append(TrendPoint(
            start, end,
            psi(binned.reference, binned.current) if binned else 0.0,
            jensen_shannon(binned.reference, binned.current) if binned else 0.0,
            summary.null_rate, summary.count,
        ))
    return points


def _newest_write(profiles: ProfileStore, view: FeatureView, types: dict[str, ValueType]) -> datetime | None:
    """Newest event time written online: from the latest materialize and push windows."""
    newest: datetime | None = None
    for source in WRITE_SOURCES:
        windows = profiles.windows(view.name, source)
        if not windows:
            continue
        last_end = max(end for _, end in windows)
        scan = profiles.scan(view.name, (source,), types, after=last_end - timedelta(microseconds=1))
        for profile in scan.profiles:
            if profile.newest_event is not None and (newest is None or profile.newest_event > newest):
                newest = profile.newest_event
    return newest


def _span(width: timedelta) -> str:
    seconds = int(width.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
