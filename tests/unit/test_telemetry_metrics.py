"""Metric names follow Prometheus conventions; the lag gauge reads the registry."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.config import QuiverConfig
from quiver_server.registry.store import RegistryStore
from quiver_server.telemetry.metrics import (
    MaterializationLagCollector,
    Metrics,
    OnlineMetrics,
    exported_metrics,
)

REQUIRED = {
    "quiver_rpc_duration_seconds_bucket",
    "quiver_online_entities_per_request_bucket",
    "quiver_feature_status_total",
    "quiver_online_store_duration_seconds_bucket",
    "quiver_online_store_errors_total",
    "quiver_flight_rows_streamed_total",
    "quiver_flight_bytes_streamed_total",
    "quiver_materialize_last_run_rows",
    "quiver_materialize_last_run_duration_seconds",
    "quiver_materialize_last_run_finished_timestamp_seconds",
    "quiver_materialization_lag_seconds",
}


def test_the_issue_s_metrics_are_all_exported() -> None:
    assert exported_metrics().keys() >= REQUIRED


def test_names_follow_prometheus_conventions() -> None:
    for name, labels in exported_metrics().items():
        assert re.fullmatch(r"quiver_[a-z0-9_]+", name), name
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert not re.search(r"_(ms|milliseconds|kb|mb)(_|$)", base), f"{name}: use base units"
        if "duration" in base or "lag" in base:
            assert base.endswith("_seconds"), name
        assert "le" not in labels or name.endswith("_bucket"), name
        # Entity keys, feature values and trace ids never become labels.
        assert not labels & {"entity", "key", "value", "trace_id", "user_id"}, name


def test_components_export_only_their_own_families() -> None:
    serving = Metrics.for_component("serving")
    flight = Metrics.for_component("flight")
    assert serving.online is not None and serving.flight is None
    assert flight.flight is not None and flight.online is None
    assert serving.rpc is not None and flight.rpc is not None


def test_feature_statuses_are_counted_from_graded_columns() -> None:
    from quiver import ValueType
    from quiver_server.serving.online_read import OutputColumn

    columns = [OutputColumn(ValueType.INT64, [0] * 3, statuses, [0] * 3)
               for statuses in ([1, 1, 3], [1, 1, 1], [4, 2, 1])]
    metrics = OnlineMetrics(registry := CollectorRegistry())
    metrics.count_statuses(columns)
    count = {
        status: registry.get_sample_value("quiver_feature_status_total", {"status": status})
        for status in ("PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE")
    }
    assert count == {"PRESENT": 6, "NULL_VALUE": 1, "NOT_FOUND": 1, "OUTSIDE_MAX_AGE": 1}


def test_lag_is_now_minus_each_online_views_watermark(applied_demo: QuiverConfig) -> None:
    store = RegistryStore(applied_demo.registry_path)
    collector = MaterializationLagCollector(applied_demo.registry_path)
    assert next(iter(collector.collect())).samples == []  # nothing materialized yet
    watermark = datetime.now(UTC) - timedelta(hours=2)

    def change(proto: pb.Registry) -> str:
        proto.view_meta["user_profile"].materialization.watermark.FromDatetime(watermark)
        return "materialize"

    store.commit(change)
    [family] = collector.collect()
    [sample] = family.samples
    assert family.name == "quiver_materialization_lag_seconds"
    assert sample.labels == {"feature_view": "user_profile"}
    assert sample.value == pytest.approx(7200, abs=60)


def test_lag_survives_an_unreadable_registry() -> None:
    collector = MaterializationLagCollector("/nonexistent/registry")
    assert next(iter(collector.collect())).samples == []
