"""Metrics scraped from the real Prometheus endpoint after real requests."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quiver import OnlineClient
from quiver.errors import NotFoundError
from quiver_server.config import QuiverConfig
from quiver_server.materialize import materialize_range
from quiver_server.serving.server import create_server
from quiver_server.telemetry import setup_telemetry

ROOT = Path(__file__).resolve().parents[2]
FEATURES = 20


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on the endpoint: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc_count(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], method: str,
              status: str) -> float:
    return value(samples, "quiver_rpc_duration_seconds_count",
                 service="quiver.serving.v1.FeatureServingService", method=method, status=status)


@pytest.fixture
def materialized(applied_demo: QuiverConfig) -> QuiverConfig:
    end = datetime.now(UTC) + timedelta(seconds=1)
    materialize_range(applied_demo, end - timedelta(days=30), end)
    return applied_demo


def test_endpoint_counts_requests_statuses_and_store_calls(materialized: QuiverConfig) -> None:
    telemetry = setup_telemetry(materialized, "serving", env={})
    metrics_port = telemetry.serve_metrics(0, "127.0.0.1")
    app, port = create_server(materialized, "127.0.0.1", 0, telemetry=telemetry)
    try:
        with app, OnlineClient(f"127.0.0.1:{port}") as client:
            for _ in range(3):  # 2 known users + 1 unknown, each with a known merchant
                client.get_online_features(
                    feature_service="fraud_model_v1",
                    entities={"user_id": [1, 2, 999_999], "merchant_id": [1, 2, 3]},
                )
            with pytest.raises(NotFoundError):
                client.get_online_features(feature_service="no_such_service",
                                           entities={"user_id": [1]})
            samples = scrape(metrics_port)
    finally:
        telemetry.shutdown()

    assert rpc_count(samples, "GetOnlineFeatures", "OK") == 3
    assert rpc_count(samples, "GetOnlineFeatures", "NOT_FOUND") == 1
    assert value(samples, "quiver_online_entities_per_request_count") == 3
    assert value(samples, "quiver_online_entities_per_request_sum") == 9
    # fraud_model_v1 reads 20 features; the unknown user misses every user feature.
    statuses = {
        status: value(samples, "quiver_feature_status_total", status=status)
        for status in ("PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE")
    }
    assert sum(statuses.values()) == 3 * 3 * FEATURES
    assert statuses["NOT_FOUND"] >= 3 * 15  # the unknown user's user_* features
    assert value(samples, "quiver_online_store_duration_seconds_count",
                 store="sqlite", operation="read") == 3
    lags = {labels: v for (name, labels), v in samples.items()
            if name == "quiver_materialization_lag_seconds"}
    assert {dict(labels)["feature_view"] for labels in lags} == {
        "user_transaction_stats", "user_profile", "merchant_stats"}
    assert all(0 <= lag < 300 for lag in lags.values())
    assert value(samples, "process_cpu_seconds_total") > 0


def test_metrics_off_means_no_interceptor_and_no_wrapper(materialized: QuiverConfig) -> None:
    from quiver_server.config import load_config

    config = load_config(materialized.repo_path, env={
        "QUIVER_TELEMETRY__METRICS__ENABLED": "false",
        "QUIVER_TELEMETRY__LOGGING__ACCESS_LOG": "false",
    })
    telemetry = setup_telemetry(config, "serving", env={})
    assert telemetry.server_interceptors() == []
    app, _ = create_server(config, "127.0.0.1", 0, telemetry=telemetry)
    with app:
        assert type(app.store).__name__ == "SqliteOnlineStore"


@pytest.mark.slow
def test_workers_share_one_metrics_endpoint(
    materialized: QuiverConfig, serve_workers: Callable[..., Any]
) -> None:
    server, target, env = serve_workers(materialized)
    metrics_port = int(env["QUIVER_TELEMETRY__METRICS__PORT"])
    workers = _children(server.process.pid)
    assert len(workers) == 2, server.output()
    directory = _environ(workers[0]).get("PROMETHEUS_MULTIPROC_DIR")
    assert directory and _environ(workers[1]).get("PROMETHEUS_MULTIPROC_DIR") == directory

    # Fresh connections until each worker has answered some: which worker the
    # kernel picks is its business, so count rather than assume.
    requests = 0
    while requests < 400 and not all(_served(Path(directory), pid) for pid in workers):
        with OnlineClient(target, options=[("grpc.use_local_subchannel_pool", 1)]) as client:
            client.get_online_features(feature_service="fraud_model_v1",
                                       entities={"user_id": [1], "merchant_id": [1]})
        requests += 1
    per_worker = [_served(Path(directory), pid) for pid in workers]
    assert all(per_worker), (per_worker, server.output())

    samples = scrape(metrics_port)
    assert rpc_count(samples, "GetOnlineFeatures", "OK") == requests == sum(per_worker)
    assert value(samples, "quiver_feature_status_total", status="PRESENT") == requests * FEATURES
    assert any(name == "quiver_materialization_lag_seconds" for name, _ in samples)

    assert server.stop() == 0, server.output()
    with pytest.raises(OSError):
        scrape(metrics_port)
    assert not Path(directory).exists(), "the supervisor removes its metrics directory"


def _children(pid: int) -> list[int]:
    """The worker processes of a supervisor (not multiprocessing's resource tracker)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pytest.skip("needs /proc/<pid>/task/<pid>/children")
    workers = []
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            continue
    return workers


def _environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in items if b"=" in item)


def _served(directory: Path, pid: int) -> float:
    """GetOnlineFeatures calls one worker answered, from its own value file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    families = MultiProcessCollector.merge([str(directory / f"histogram_{pid}.db")])
    return sum(
        sample.value for family in families for sample in family.samples
        if sample.name == "quiver_rpc_duration_seconds_count"
        and sample.labels.get("method") == "GetOnlineFeatures"
    )


@pytest.mark.slow
def test_a_metrics_port_in_use_is_named(applied_demo: QuiverConfig) -> None:
    """`quiver serve` whose metrics port is taken (say by `quiver serve-flight` on the same
    repo, which defaults to the same port) says which address and setting, in its one line."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "QUIVER_TELEMETRY__METRICS__HOST": "127.0.0.1",
               "QUIVER_TELEMETRY__METRICS__PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "quiver_server.cli", "--repo", str(applied_demo.repo_path),
             "serve", "--host", "127.0.0.1", "--port", "0"],
            env=env, capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("quiver: error:")]
    assert f"127.0.0.1:{port}" in line and "telemetry.metrics.port" in line, result.stderr
