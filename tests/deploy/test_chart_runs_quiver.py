"""The chart's containers, run for real: their args and env against the `quiver` CLI.

A pod is simulated on this machine: the rendered ConfigMap is written where the chart mounts it,
the shared volume is a temporary directory, and the apply Job, the materialize CronJob and the
serving Deployment run their exact `args` and literal `env`. The serving process must then answer
the very gRPC health checks the probes make, and drain on SIGTERM within the pod's grace period.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .helmkit import env_of, render

pytestmark = pytest.mark.slow

QUIVER = Path(sys.executable).parent / "quiver"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _container(rendered: Any, component: str) -> dict[str, Any]:
    _, pod = rendered.workload(component)
    container: dict[str, Any] = pod["containers"][0]
    return container


def _process_env(container: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIVER_", "OTEL_"))}
    env.update({name: e["value"] for name, e in env_of(container).items() if "value" in e})
    return env


def _run(container: dict[str, Any], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUIVER), *container["args"]],
        env=_process_env(container),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status)
        except grpc.RpcError:
            return -1


def _wait_for_probes(
    container: dict[str, Any], process: subprocess.Popen[bytes], log_path: Path
) -> None:
    """Wait until every gRPC probe of `container` gets SERVING, as kubelet would."""
    probes = {p: container[p]["grpc"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    deadline = time.monotonic() + 60
    statuses: dict[str, int] = {}
    while time.monotonic() < deadline and process.poll() is None:
        statuses = {p: _health(g["port"], g["service"]) for p, g in probes.items()}
        if all(s == health_pb2.HealthCheckResponse.SERVING for s in statuses.values()):
            break
        time.sleep(0.2)
    assert process.poll() is None, log_path.read_text()
    assert all(s == health_pb2.HealthCheckResponse.SERVING for s in statuses.values()), (
        statuses, log_path.read_text()
    )


def test_chart_containers_run_against_the_cli(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    made = subprocess.run(
        [str(QUIVER), "init-demo", str(demo), "--users", "20", "--merchants", "5", "--days", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    repo, data = tmp_path / "repo", tmp_path / "volume"
    port = _free_port()
    out = render(
        {
            "project": "fraud_detection",
            "onlineStore": {"type": "sqlite"},
            "serving": {"replicaCount": 1, "port": port, "healthPort": _free_port()},
            "telemetry": {"metrics": {"enabled": False}},
            "persistence": {"mountPath": str(data)},
            "featureRepo": {
                "mountPath": str(repo),
                "files": {"features.py": (demo / "features.py").read_text()},
            },
        }
    )
    # What kubelet does: the ConfigMap's keys become files; the volume exists.
    repo.mkdir()
    config_map = out.get("ConfigMap", f"{out.fullname}-config")
    for name, content in config_map["data"].items():
        (repo / name).write_text(content)
    shutil.copytree(demo / "data", data / "offline")

    apply = _run(_container(out, "apply"), tmp_path)
    assert apply.returncode == 0, apply.stderr
    materialize = _run(_container(out, "materialize"), tmp_path)
    assert materialize.returncode == 0, materialize.stderr

    serving = _container(out, "serving")
    log_path = tmp_path / "serving.log"
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            [str(QUIVER), *serving["args"]],
            env=_process_env(serving),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        try:
            _wait_for_probes(serving, process, log_path)
            _, pod = out.workload("serving")
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=pod["terminationGracePeriodSeconds"])
            assert process.returncode == 0, log_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_flight_container_answers_its_grpc_probes(tmp_path: Path) -> None:
    from quiver_server.demo_repo import DEFINITIONS

    repo, data = tmp_path / "repo", tmp_path / "volume"
    port, health_port = _free_port(), _free_port()
    out = render(
        {
            "onlineStore": {"type": "sqlite"},
            "serving": {"replicaCount": 1},
            "flight": {"port": port, "health": {"port": health_port, "checkSeconds": 1}},
            "telemetry": {"metrics": {"enabled": False}},
            "persistence": {"mountPath": str(data)},
            "featureRepo": {"mountPath": str(repo), "files": {"features.py": DEFINITIONS}},
        }
    )
    repo.mkdir()
    (data / "offline").mkdir(parents=True)
    for name, content in out.get("ConfigMap", f"{out.fullname}-config")["data"].items():
        (repo / name).write_text(content)
    applied = _run(_container(out, "apply"), tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    flight = _container(out, "flight")
    log_path = tmp_path / "flight.log"
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            [str(QUIVER), *flight["args"]],
            env=_process_env(flight),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        try:
            _wait_for_probes(flight, process, log_path)
            # The Flight port itself takes connections.
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            _, pod = out.workload("flight")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=pod["terminationGracePeriodSeconds"]) == 0, log_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
