"""The README's main job (`make demo`), end to end, in real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from monitoring_kit import alert, chart_alert_rules, input_series, open_in_chromium, promtool_test

from quiver_server.config import load_config
from quiver_server.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    repo = tmp_path / "demo"
    # Metrics on a free port: the default one may be taken on a shared machine.
    env = {**os.environ, "QUIVER_TELEMETRY__METRICS__PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--repo", str(repo)],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Applied: registry version 1" in out
    assert "user_id=1 merchant_id=10" in out
    assert "txn_count_24h" in out and "merchant_category" in out
    # The unknown user is reported, not invented.
    assert "[NOT_FOUND]" in out
    assert "quiver serve stopped cleanly (exit code 0)" in out
    assert "Training set (point-in-time correct" in out
    assert "user_id=999999  merchant_id=30  is_fraud=False  txn_count_24h=None" in out
    assert "quiver serve-flight stopped cleanly (exit code 0)" in out
    # The scaled service: fitted, served with the on-demand ratio, and its
    # training rows equal the online answer.
    assert "Fitted feature service 'fraud_model_scaled' on 2,000 rows" in out
    assert "Feature service fraud_model_scaled (transform parameters version 1)" in out
    assert "amount_to_avg_7d" in out
    assert "All 21 columns identical to the online answer: True" in out
    # The labelled events' training set, stored as a dataset, comes back the same
    # by name, and its lineage names what it pinned.
    assert "pulled again by name: identical cell for cell: True" in out
    assert "training dataset fraud_demo:1  (4 rows" in out
    assert "└── status reproducible" in out

    # The second batch's shifted feature, and only it, is reported as drifted ...
    assert "1 of 20 features drifted: user_transaction_stats:txn_amount_avg_7d" in out
    assert ('quiver_feature_drift_status{feature="txn_amount_avg_7d",'
            'feature_view="user_transaction_stats",status="drift"} 1.0') in out
    # ... shows first in the HTML report, as Chromium renders it ...
    dom, _ = open_in_chromium(repo / "drift-report.html", "demo-drift-report.png")
    first = dom.split('<section class="feature')[1]
    assert 'data-name="user_transaction_stats:txn_amount_avg_7d" data-status="drift"' in first
    assert 'data-ready="true"' in dom
    # ... and raises the chart's drift alert from the metrics the servers export.
    registry = Metrics.for_component("serving", None, load_config(repo, env={}).offline_root)
    from prometheus_client import generate_latest

    exposition = generate_latest(registry.exposition_registry()).decode()
    groups = chart_alert_rules()
    labels = {"feature_view": "user_transaction_stats", "feature": "txn_amount_avg_7d"}
    promtool_test(groups, [{
        "interval": "1m",
        "input_series": input_series(exposition),
        "alert_rule_test": [{"eval_time": "20m", "alertname": "QuiverFeatureDrift", "exp_alerts": [
            alert("QuiverFeatureDrift", groups, {**labels, "metric": "psi"}),
            alert("QuiverFeatureDrift", groups, {**labels, "metric": "jensen_shannon"}),
        ]}],
    }], tmp_path)
