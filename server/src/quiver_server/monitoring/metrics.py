"""Prometheus metrics of the latest `quiver monitor` run.

Read from ``_monitoring/latest-run.pb`` at scrape time (re-read only when the
file changes), so whichever process or CronJob ran the monitor, every serving
pod exports the same figures; alert rules aggregate with ``max by``.

- ``quiver_feature_drift_score{feature_view, feature, metric}``: psi,
  jensen_shannon, or null_rate (the absolute change of the null share);
- ``quiver_feature_drift_threshold{feature_view, feature, metric}``: the
  threshold in force for each;
- ``quiver_feature_drift_status{feature_view, feature, status}``: 1 for the
  feature's status (ok, drift, no_reference, no_current);
- ``quiver_feature_null_rate{feature_view, feature, window}``: current, reference;
- ``quiver_feature_view_freshness_seconds{feature_view}``: now minus the newest
  event time written online (materialize, push); ``quiver_feature_view_ttl_seconds``
  beside it (0 = unlimited) so a rule can compare them;
- ``quiver_monitor_last_run_timestamp_seconds`` and
  ``quiver_monitor_skipped_profile_files``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import pyarrow.fs as pafs
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.monitoring.storage import ProfileStore

__all__ = ["MONITORING_SERIES", "MonitoringCollector", "RunCollector"]

# Series name -> label names (for the dashboards and rules tests).
MONITORING_SERIES: dict[str, frozenset[str]] = {
    "quiver_feature_drift_score": frozenset({"feature_view", "feature", "metric"}),
    "quiver_feature_drift_threshold": frozenset({"feature_view", "feature", "metric"}),
    "quiver_feature_drift_status": frozenset({"feature_view", "feature", "status"}),
    "quiver_feature_null_rate": frozenset({"feature_view", "feature", "window"}),
    "quiver_feature_view_freshness_seconds": frozenset({"feature_view"}),
    "quiver_feature_view_ttl_seconds": frozenset({"feature_view"}),
    "quiver_monitor_last_run_timestamp_seconds": frozenset(),
    "quiver_monitor_skipped_profile_files": frozenset(),
}
_STATUS = {
    pb.DRIFT_STATUS_OK: "ok", pb.DRIFT_STATUS_DRIFT: "drift",
    pb.DRIFT_STATUS_NO_REFERENCE: "no_reference", pb.DRIFT_STATUS_NO_CURRENT: "no_current",
}


class MonitoringCollector(Collector):
    """Exports the latest monitor run found under an offline store root."""

    def __init__(self, offline_root: str) -> None:
        self._store = ProfileStore(offline_root)
        self._lock = threading.Lock()
        self._stamp: tuple[int | None, int | None] | None = None
        self._run: pb.MonitorRun | None = None

    def collect(self) -> Iterator[Metric]:
        run = self._latest()
        yield from families(run, time.time())

    def describe(self) -> Iterable[Metric]:
        return []

    def _latest(self) -> pb.MonitorRun | None:
        try:
            info = self._store.fs.get_file_info(f"{self._store.base}/latest-run.pb")
            stamp = (info.mtime_ns, info.size) if info.type == pafs.FileType.File else None
            with self._lock:
                if stamp != self._stamp:
                    self._run = self._store.read_run() if stamp is not None else None
                    self._stamp = stamp
                return self._run
        except Exception:
            return None  # a scrape never fails because the monitor is mid-write


class RunCollector(Collector):
    """Exports one given run (what `quiver monitor` pushes to a Pushgateway)."""

    def __init__(self, run: pb.MonitorRun) -> None:
        self._run = run

    def collect(self) -> Iterator[Metric]:
        yield from families(self._run, time.time())

    def describe(self) -> Iterable[Metric]:
        return []


def families(run: pb.MonitorRun | None, now: float) -> list[Metric]:
    """The gauge families for `run` (empty families when there is none yet)."""
    score = GaugeMetricFamily(
        "quiver_feature_drift_score",
        "Drift of a feature's current window from its reference, by metric "
        "(psi, jensen_shannon, null_rate = absolute change of the null share).",
        labels=["feature_view", "feature", "metric"],
    )
    threshold = GaugeMetricFamily(
        "quiver_feature_drift_threshold",
        "Threshold in force for each drift metric of a feature.",
        labels=["feature_view", "feature", "metric"],
    )
    status = GaugeMetricFamily(
        "quiver_feature_drift_status",
        "1 for the feature's drift status (ok, drift, no_reference, no_current).",
        labels=["feature_view", "feature", "status"],
    )
    null_rate = GaugeMetricFamily(
        "quiver_feature_null_rate",
        "Share of nulls in the current and the reference window.",
        labels=["feature_view", "feature", "window"],
    )
    freshness = GaugeMetricFamily(
        "quiver_feature_view_freshness_seconds",
        "Seconds since the event time of the newest value written online for the view.",
        labels=["feature_view"],
    )
    ttl = GaugeMetricFamily(
        "quiver_feature_view_ttl_seconds",
        "The view's ttl (0 = unlimited), to compare freshness with.",
        labels=["feature_view"],
    )
    last_run = GaugeMetricFamily(
        "quiver_monitor_last_run_timestamp_seconds", "When `quiver monitor` last ran."
    )
    skipped = GaugeMetricFamily(
        "quiver_monitor_skipped_profile_files",
        "Profile files the last monitor run could not read (corrupt or truncated).",
    )
    result: list[Metric] = [score, threshold, status, null_rate, freshness, ttl, last_run, skipped]
    if run is None:
        return result
    last_run.add_metric([], run.ran_at.ToNanoseconds() / 1e9)
    skipped.add_metric([], float(len(run.skipped_files)))
    for d in run.features:
        labels = [d.feature_view, d.feature]
        status.add_metric([*labels, _STATUS.get(d.status, "unknown")], 1.0)
        if d.status in (pb.DRIFT_STATUS_NO_REFERENCE, pb.DRIFT_STATUS_NO_CURRENT):
            continue
        change = abs(d.current_null_rate - d.reference_null_rate)
        for metric, value, limit in (
            ("psi", d.psi, d.psi_threshold),
            ("jensen_shannon", d.jensen_shannon, d.jensen_shannon_threshold),
            ("null_rate", change, d.null_rate_threshold),
        ):
            score.add_metric([*labels, metric], value)
            threshold.add_metric([*labels, metric], limit)
        null_rate.add_metric([*labels, "current"], d.current_null_rate)
        null_rate.add_metric([*labels, "reference"], d.reference_null_rate)
    for view in run.views:
        ttl.add_metric([view.feature_view], float(view.ttl_seconds))
        if view.HasField("newest_event"):
            age = now - view.newest_event.ToNanoseconds() / 1e9
            freshness.add_metric([view.feature_view], max(0.0, age))
    return result
