"""Feature monitoring end to end: a shifted feature drifts, alerts through the chart's
rules (promtool against a real /metrics scrape), shows in the HTML report in headless
Chromium, and training sets and pushes leave their profiles."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from monitoring_kit import alert, chart_alert_rules, input_series, open_in_chromium, promtool_test

from quiver import OnlineClient, TrainingClient, ValueType
from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.config import QuiverConfig, load_config
from quiver_server.demo_repo import SHIFTED_FEATURE, write_demo_repo, write_shifted_batch
from quiver_server.materialize import materialize_range
from quiver_server.monitoring.monitor import MonitorResult, run_monitor
from quiver_server.monitoring.report import render_report
from quiver_server.monitoring.sinks import ProfileWriter
from quiver_server.monitoring.storage import ProfileStore
from quiver_server.repo import apply
from quiver_server.telemetry.metrics import Metrics, MetricsEndpoint

VIEW = "user_transaction_stats"


@dataclass
class Scenario:
    config: QuiverConfig
    end: datetime
    result: MonitorResult


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """The demo repo materialized in two batches, the second with one feature x3."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    repo = write_demo_repo(tmp_path_factory.mktemp("monitoring") / "repo", end=end)
    config = load_config(repo, env={})
    apply(config)
    writer = ProfileWriter(ProfileStore(config.offline_root), producer="test")
    yesterday = end - timedelta(days=1)
    materialize_range(config, end - timedelta(days=30), yesterday, progress=False, profiles=writer)
    write_shifted_batch(repo, at=end - timedelta(minutes=30))
    materialize_range(config, yesterday, end + timedelta(seconds=1), progress=False,
                      profiles=writer)
    result = run_monitor(config, now=end + timedelta(seconds=1))
    return Scenario(config, end, result)


def test_only_the_shifted_feature_drifts(scenario: Scenario) -> None:
    drifted = [(r.drift.feature_view, r.drift.feature) for r in scenario.result.drifted]
    assert drifted == [(VIEW, SHIFTED_FEATURE)]
    worst = scenario.result.features[0].drift
    assert (worst.feature, list(worst.violations)) == (SHIFTED_FEATURE, ["psi", "jensen_shannon"])
    assert worst.reference_count == worst.current_count == 1000
    statuses = {(r.drift.feature_view, r.drift.feature): r.drift.status
                for r in scenario.result.features}
    # user_profile has nothing newer than its first batch.
    assert statuses[("user_profile", "age")] == pb.DRIFT_STATUS_NO_CURRENT
    freshness = {v.feature_view: v for v in scenario.result.run.views}
    newest = freshness[VIEW].newest_event.ToDatetime(tzinfo=UTC)
    assert newest == scenario.end - timedelta(minutes=30)
    assert freshness[VIEW].ttl_seconds == 2 * 86_400


def scrape(config: QuiverConfig) -> str:
    """The serving process's /metrics, over HTTP, as Prometheus reads it."""
    metrics = Metrics.for_component("serving", config.registry_path, config.offline_root)
    endpoint = MetricsEndpoint(metrics.exposition_registry(), 0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=10) as r:
            return str(r.read().decode())
    finally:
        endpoint.close()


def test_the_drift_alert_fires_through_the_chart_rules(scenario: Scenario, tmp_path: Path) -> None:
    text = scrape(scenario.config)
    assert (f'quiver_feature_drift_status{{feature="{SHIFTED_FEATURE}",feature_view="{VIEW}",'
            f'status="drift"}} 1.0') in text
    groups = chart_alert_rules()
    labels = {"feature_view": VIEW, "feature": SHIFTED_FEATURE}
    promtool_test(groups, [{
        "interval": "1m",
        "input_series": input_series(text, {"namespace": "features"}),
        "alert_rule_test": [
            # Pending for driftFor (15m), then firing for psi and Jensen-Shannon only.
            {"eval_time": "10m", "alertname": "QuiverFeatureDrift", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "QuiverFeatureDrift", "exp_alerts": [
                alert("QuiverFeatureDrift", groups, {**labels, "metric": "psi"}),
                alert("QuiverFeatureDrift", groups, {**labels, "metric": "jensen_shannon"}),
            ]},
            # Every view was written within its ttl.
            {"eval_time": "20m", "alertname": "QuiverFeatureViewStale", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "QuiverMonitorNotRunning", "exp_alerts": []},
        ],
    }], tmp_path)


def test_staleness_not_found_errors_and_a_silent_monitor_alert(tmp_path: Path) -> None:
    groups = chart_alert_rules()
    serving = 'service="quiver.serving.v1.FeatureServingService"'

    def series(selector: str, values: str) -> dict[str, str]:
        return {"series": selector, "values": values}

    promtool_test(groups, [{
        "interval": "1m",
        "input_series": [
            # Three days old with a two-day ttl; a fresh view; a view without ttl.
            series('quiver_feature_view_freshness_seconds{feature_view="old"}', "259200+60x200"),
            series('quiver_feature_view_ttl_seconds{feature_view="old"}', "172800+0x200"),
            series('quiver_feature_view_freshness_seconds{feature_view="fresh"}', "60+0x200"),
            series('quiver_feature_view_ttl_seconds{feature_view="fresh"}', "172800+0x200"),
            series('quiver_feature_view_freshness_seconds{feature_view="forever"}', "9e9+0x200"),
            series('quiver_feature_view_ttl_seconds{feature_view="forever"}', "0+0x200"),
            # A third of served values NOT_FOUND.
            series('quiver_feature_status_total{namespace="features",status="PRESENT"}', "0+100x200"),
            series('quiver_feature_status_total{namespace="features",status="NOT_FOUND"}', "0+50x200"),
            # 5% server errors on lookups; pushes fail only through the caller's fault.
            series(f'quiver_rpc_duration_seconds_count{{{serving},method="GetOnlineFeatures",'
                   f'status="OK"}}', "0+95x200"),
            series(f'quiver_rpc_duration_seconds_count{{{serving},method="GetOnlineFeatures",'
                   f'status="UNAVAILABLE"}}', "0+5x200"),
            series(f'quiver_rpc_duration_seconds_count{{{serving},method="PushFeatures",'
                   f'status="INVALID_ARGUMENT"}}', "0+50x200"),
            # The monitor last ran at time 0.
            series("quiver_monitor_last_run_timestamp_seconds", "0+0x200"),
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "QuiverFeatureViewStale",
             "exp_alerts": [alert("QuiverFeatureViewStale", groups, {"feature_view": "old"})]},
            {"eval_time": "20m", "alertname": "QuiverNotFoundRatioHigh",
             "exp_alerts": [alert("QuiverNotFoundRatioHigh", groups, {"namespace": "features"})]},
            {"eval_time": "20m", "alertname": "QuiverErrorRateHigh", "exp_alerts": [
                alert("QuiverErrorRateHigh", groups, {
                    "service": "quiver.serving.v1.FeatureServingService",
                    "method": "GetOnlineFeatures",
                }),
            ]},
            {"eval_time": "20m", "alertname": "QuiverMonitorNotRunning", "exp_alerts": []},
            {"eval_time": "130m", "alertname": "QuiverMonitorNotRunning",
             "exp_alerts": [alert("QuiverMonitorNotRunning", groups, {})]},
        ],
    }], tmp_path)


def test_the_report_shows_the_drift_in_chromium(scenario: Scenario, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_report(scenario.result, scenario.config.project), encoding="utf-8")
    html = page.read_text()
    assert "<link" not in html and "src=" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    ), "self-contained: nothing loaded from elsewhere"
    dom, screenshot = open_in_chromium(page, "monitoring-report.png")
    assert screenshot.exists()
    assert 'data-ready="true"' in dom, "the page's script ran"
    assert "20 of 20 features shown" in dom
    sections = dom.split('<section class="feature')[1:]
    assert len(sections) == 20
    first = sections[0]
    assert f'data-name="{VIEW}:{SHIFTED_FEATURE}"' in first and 'data-status="drift"' in first
    assert first.count('class="bar reference"') == first.count('class="bar current"') >= 10
    assert '<svg class="trend"' in first and 'class="threshold"' in first
    assert '<div id="count-drifted"><b>1</b>' in dom
    # Worst first: drift, then comparable features, then the ones without data.
    order = [s.split('data-status="')[1].split('"')[0] for s in sections]
    assert order[0] == "drift" and order[-1] == "no-current"
    assert order.index("no-current") > max(i for i, s in enumerate(order) if s == "ok")


@pytest.fixture
def flight_port(scenario: Scenario) -> Iterator[int]:
    from quiver_flight.server import create_flight_server

    server, port = create_flight_server(scenario.config)
    try:
        yield port
    finally:
        server.shutdown()


def test_a_pulled_training_set_is_stored_as_a_reference(scenario: Scenario, flight_port: int) -> None:
    spine = pa.table({
        "user_id": pa.array(range(1, 1001), pa.int64()),
        "event_timestamp": pa.array([scenario.end - timedelta(days=2)] * 1000,
                                    pa.timestamp("us", tz="UTC")),
    })
    features = [f"{VIEW}:{SHIFTED_FEATURE}", f"{VIEW}:txn_count_24h"]
    store = ProfileStore(scenario.config.offline_root)
    directory = Path(store.profiles, VIEW, "training_set", "risk_v1")
    with TrainingClient(f"grpc://127.0.0.1:{flight_port}") as client:
        handle = client.upload_spine(spine)
        table = client.get_training_set(handle, features=features, name="risk_v1",
                                        partition_rows=400)
        assert table.num_rows == 1000
        files = sorted(f.name for f in directory.glob("*.qprof"))
        assert [name.split("-")[1] for name in files] == ["p0.qprof", "p1.qprof", "p2.qprof"]
        # The same training set pulled again stores nothing new; a new spine under the
        # same name is a new training set, and the newest is the reference.
        client.get_training_set(handle, features=features, name="risk_v1", partition_rows=400)
        assert sorted(f.name for f in directory.glob("*.qprof")) == files
        client.get_training_set(spine, features=features, name="risk_v1", partition_rows=500)
        assert len(list(directory.glob("*.qprof"))) == 5
    assert store.training_sets() == {"risk_v1": [VIEW]}
    result = run_monitor(scenario.config, reference="training_set:risk_v1", views=[VIEW],
                         now=scenario.end + timedelta(seconds=1), store=False)
    by_feature = {r.drift.feature: r.drift for r in result.features}
    assert by_feature[SHIFTED_FEATURE].status == pb.DRIFT_STATUS_DRIFT
    assert by_feature[SHIFTED_FEATURE].reference_count == 1000
    assert by_feature["txn_count_24h"].status == pb.DRIFT_STATUS_OK
    assert by_feature["txn_count_1h"].status == pb.DRIFT_STATUS_NO_REFERENCE
    with TrainingClient(f"grpc://127.0.0.1:{flight_port}") as client, pytest.raises(
        Exception, match="training set name 'no/slashes' is invalid"
    ):
        client.get_training_set(spine, features=features, name="no/slashes")


def test_pushed_rows_are_profiled_when_the_server_stops(scenario: Scenario) -> None:
    from quiver_server.serving.server import create_server
    from quiver_server.telemetry import Telemetry

    config = scenario.config.model_copy(update={
        "monitoring": scenario.config.monitoring.model_copy(update={"flush_seconds": 3600.0}),
    })
    server, port = create_server(config, "127.0.0.1", 0, telemetry=Telemetry("serving"))
    now = datetime.now(UTC)
    with server, OnlineClient(f"127.0.0.1:{port}") as client:
        client.push("merchant_stats", {
            "merchant_id": [1, 2, 3], "event_timestamp": [now, now, now],
            "merchant_category": ["fuel", "fuel", None], "chargeback_rate_30d": [0.1, 0.2, 0.3],
            "merchant_txn_count_24h": [1, 2, 3], "avg_ticket_30d": [1.0, 2.0, 3.0],
            "is_high_risk": [True, False, True],
        })
    (profile,) = ProfileStore(config.offline_root).scan(
        "merchant_stats", ("push",), {"merchant_category": ValueType.STRING},
    ).profiles
    assert profile.rows == 3 and profile.newest_event is not None
    category = profile.features["merchant_category"]
    assert (category.count, category.null_count) == (3, 1)


def test_history_is_profiled_on_demand(scenario: Scenario) -> None:
    # An hour-long current window holds exactly the shifted batch (regular rows are 6 h apart).
    settings = scenario.config.monitoring.model_copy(update={
        "current_window_seconds": 3600, "reference_window_seconds": 2 * 86_400,
    })
    config = scenario.config.model_copy(update={"monitoring": settings})
    result = run_monitor(config, current="history", views=[VIEW],
                         now=scenario.end + timedelta(seconds=1), store=False)
    by_feature = {r.drift.feature: r for r in result.features}
    shifted = by_feature[SHIFTED_FEATURE]
    assert shifted.current is not None and shifted.current.count == 1000
    assert shifted.reference is not None and shifted.reference.count == 8000
    assert shifted.drift.status == pb.DRIFT_STATUS_DRIFT
    # One point per hour holding history, oldest first; the last one is the current hour.
    ends = [point.window_end for point in shifted.trend]
    assert ends == sorted(ends) and ends[-1] == scenario.end + timedelta(seconds=1)
    assert shifted.trend[-1].count == 1000 and shifted.trend[-1].psi > 1
    assert by_feature["txn_count_24h"].drift.status == pb.DRIFT_STATUS_OK


def test_the_cli_reports_corrupt_files_and_can_fail_on_drift(scenario: Scenario, tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "repo"
    shutil.copytree(scenario.config.repo_path, repo)
    (window,) = list((repo / "data" / "_monitoring" / "profiles" / VIEW / "materialize").iterdir())[:1]
    bad = window / "broken.qprof"
    bad.write_bytes(b"QVPROF1\n\x00\x00")
    command = [sys.executable, "-m", "quiver_server.cli", "--repo", str(repo), "monitor"]
    now = (scenario.end + timedelta(seconds=1)).isoformat()
    done = subprocess.run([*command, "--now", now], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"1 of 20 features drifted: {VIEW}:{SHIFTED_FEATURE}" in done.stdout
    assert f"quiver: warning: skipped profile file {bad}: truncated" in done.stderr
    failing = subprocess.run([*command, "--now", now, "--fail-on-drift", "--views", "user_profile"],
                             capture_output=True, text=True, timeout=120)
    assert failing.returncode == 0, "nothing drifted in user_profile"
    failing = subprocess.run([*command, "report", "--out", str(tmp_path / "r.html"), "--now", now,
                              "--fail-on-drift"], capture_output=True, text=True, timeout=120)
    assert failing.returncode == 3 and (tmp_path / "r.html").exists()
    assert "broken.qprof" in (tmp_path / "r.html").read_text()
    wrong = subprocess.run([*command, "--reference", "yesterday"], capture_output=True, text=True,
                           timeout=120)
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        "quiver: error: reference: 'yesterday': use trailing or training_set:NAME"
    )
