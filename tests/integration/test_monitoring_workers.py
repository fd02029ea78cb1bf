"""Served values are profiled by every worker of `quiver serve --workers 2` and merge."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from quiver import OnlineClient
from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.config import QuiverConfig
from quiver_server.monitoring.monitor import run_monitor
from quiver_server.monitoring.storage import ProfileStore

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(target: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-3000:]
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise AssertionError(f"{target} never became SERVING")


def producers(store: ProfileStore) -> set[str]:
    """The workers (host-pid) whose serving profiles are on disk."""
    base = Path(store.profiles) / "user_profile" / "serving"
    return {p.name.rsplit("-", 1)[0] for p in base.glob("*/*.qprof")}


def test_profiles_of_two_workers_merge(materialized: QuiverConfig) -> None:
    # A stored run, which the supervisor's one metrics endpoint exports for both workers.
    first = run_monitor(materialized)
    port, metrics_port = free_port(), free_port()
    environment = {**os.environ, "QUIVER_TELEMETRY__LOGGING__FORMAT": "json",
                   "QUIVER_TELEMETRY__METRICS__PORT": str(metrics_port),
                   "QUIVER_TELEMETRY__METRICS__HOST": "127.0.0.1",
                   "QUIVER_MONITORING__SERVING_SAMPLE_RATE": "1.0",
                   "QUIVER_MONITORING__FLUSH_SECONDS": "0.2"}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "quiver_server.cli", "--repo", str(materialized.repo_path), "serve",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    store = ProfileStore(materialized.offline_root)
    lookups = 0
    try:
        wait_serving(f"127.0.0.1:{port}", process)
        # Fresh connections until both workers have flushed served values (the kernel
        # picks a worker per connection); bounded in calls and time.
        deadline = time.monotonic() + 90
        while len(producers(store)) < 2 and time.monotonic() < deadline and lookups < 5000:
            for _ in range(10):
                with OnlineClient(f"127.0.0.1:{port}") as client:
                    result = client.get_online_features(
                        features=["user_profile:age", "user_profile:country"],
                        entities={"user_id": [1, 999_999]},
                    )
                    assert result.statuses("age") == ["PRESENT", "NOT_FOUND"]
                    lookups += 1
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            exported = r.read().decode()
        samples = {s.name: s for f in text_string_to_metric_families(exported) for s in f.samples}
        ran_at = first.run.ran_at.ToNanoseconds() / 1e9
        assert samples["quiver_monitor_last_run_timestamp_seconds"].value == ran_at
        assert 'quiver_feature_drift_status{feature="age",feature_view="user_profile",' in exported
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    workers = producers(store)
    assert len(workers) == 2, f"profiles from {workers} after {lookups} lookups"
    # Every sampled lookup is in exactly one worker's files, and the monitor merges them.
    result = run_monitor(materialized, current="serving", views=["user_profile"], store=False)
    age = next(r for r in result.features if r.drift.feature == "age")
    assert age.current is not None
    assert age.current.count == 2 * lookups
    assert age.current.null_count == lookups, "NOT_FOUND counts as a null"
    assert age.drift.status == pb.DRIFT_STATUS_NO_REFERENCE
