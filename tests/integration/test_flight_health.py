"""The Flight server's readiness, on the standard gRPC health service: it follows whether the
server can serve (registry, offline store) and goes NOT_SERVING on SIGTERM. Tests wait on the
health service's own Watch stream, never on time."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver.errors import DefinitionError
from quiver_flight.health import FLIGHT_SERVICE
from quiver_flight.server import create_flight_server
from quiver_server.config import QuiverConfig

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WAIT = 60.0


@pytest.fixture
def repo(flight_repo: Callable[..., QuiverConfig]) -> QuiverConfig:
    return flight_repo(health_check_seconds=0.05)


class Health:
    """A Watch stream on one health service, read one change at a time."""

    def __init__(self, port: int, service: str = FLIGHT_SERVICE) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.stream: Iterator[health_pb2.HealthCheckResponse] = self.stub.Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
        self.last: int | None = None

    def next_change(self) -> int:
        """The next status that differs from the last one seen."""
        for response in self.stream:
            if response.status != self.last:
                self.last = response.status
                return self.last
        raise AssertionError("the health stream ended")

    def check(self, service: str) -> int:
        return int(self.stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT).status)


def test_readiness_follows_the_registry_and_the_offline_store(repo: QuiverConfig) -> None:
    server, _ = create_flight_server(repo)
    with server:
        assert server.health is not None
        health = Health(server.health.port)
        assert health.next_change() == SERVING
        registry, aside = repo.registry_path, repo.registry_path.with_name("registry-aside")
        registry.rename(aside)
        assert health.next_change() == NOT_SERVING
        aside.rename(registry)
        assert health.next_change() == SERVING
        # A newest version that does not verify: the newest that does is served, so still ready.
        newest = max(registry.glob("v*.pb"))
        broken = registry / f"v{int(newest.stem[1:]) + 1:08d}.pb"
        broken.write_bytes(b"\xff\xff\xff\xff")
        assert server.health.monitor.run_now(timeout=WAIT)
        assert health.check(FLIGHT_SERVICE) == SERVING
        broken.unlink()
        offline = Path(repo.offline_root)
        offline.rename(offline.with_name("offline-aside"))
        assert health.next_change() == NOT_SERVING
        offline.with_name("offline-aside").rename(offline)
        assert health.next_change() == SERVING
        # The process itself stays alive throughout (liveness).
        assert health.check("") == SERVING
        server.health.stop_serving()
        assert health.next_change() == NOT_SERVING
        assert health.check("") == NOT_SERVING
        health.channel.close()


def test_an_empty_registry_is_not_ready(tmp_path: Path, make_config: Callable[..., QuiverConfig]) -> None:
    server, _ = create_flight_server(make_config(tmp_path, health_check_seconds=0.05))
    with server:
        assert server.health is not None
        health = Health(server.health.port)
        assert health.next_change() == NOT_SERVING
        assert health.check("") == SERVING
        health.channel.close()


def test_a_registry_with_no_version_that_verifies_is_not_ready(repo: QuiverConfig) -> None:
    for version in repo.registry_path.glob("v*.pb"):
        version.write_bytes(version.read_bytes()[:-7])  # torn
    server, _ = create_flight_server(repo)
    with server:
        assert server.health is not None
        health = Health(server.health.port)
        assert health.next_change() == NOT_SERVING
        health.channel.close()


def test_a_taken_health_port_stops_the_server_from_starting(repo: QuiverConfig) -> None:
    first, _ = create_flight_server(repo)
    with first:
        assert first.health is not None
        with pytest.raises(DefinitionError, match="flight.health_port"):
            create_flight_server(repo, health_port=first.health.port)


@pytest.mark.slow
def test_serve_flight_reports_health_and_goes_not_serving_on_sigterm(
    applied_demo: QuiverConfig, quiver_process: Callable[..., Any],
    server_env: Callable[..., dict[str, str]],
) -> None:
    server = quiver_process(
        ["--repo", str(applied_demo.repo_path), "serve-flight", "--host", "127.0.0.1",
         "--port", "0", "--health-port", "0"], server_env())
    ready = re.compile(r"health \(grpc.health.v1\) on 127\.0\.0\.1:(\d+)")
    server.wait_for(lambda p: any(ready.search(line) for line in p.lines), "the health line")
    port = next(int(m.group(1)) for line in server.lines if (m := ready.search(line)))
    health = Health(port)
    assert health.next_change() == SERVING
    server.process.send_signal(signal.SIGTERM)
    assert health.next_change() == NOT_SERVING
    health.channel.close()
    assert server.stop() == 0, server.output()


def test_a_taken_flight_port_stops_the_server_from_starting_with_one_clear_error(
    repo: QuiverConfig,
) -> None:
    """As for the health port: the setting and address, not Arrow's "Server did not start
    properly" (which the CLI printed with a traceback)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DefinitionError, match=rf"flight.port: cannot listen on .*127\.0\.0\.1:{port}"):
            create_flight_server(repo, f"grpc://127.0.0.1:{port}")
