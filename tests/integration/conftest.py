"""Integration fixtures: feature repos built from SDK objects, and real Flight servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from quiver import Entity, FeatureService, FeatureView
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.config import (
    FlightConfig,
    LoggingConfig,
    MetricsConfig,
    OfflineStoreConfig,
    QuiverConfig,
    TelemetryConfig,
)
from quiver_server.registry import convert
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore


def make_config(base: Path, project: str = "test", **flight: Any) -> QuiverConfig:
    """A config rooted at `base` (registry in base/registry, offline store in base/data),
    with metrics and access logs off so servers start fast and quietly."""
    return QuiverConfig(
        project=project,
        registry=str(base / "registry"),
        offline_store=OfflineStoreConfig(root=str(base / "data")),
        flight=FlightConfig(**flight),
        telemetry=TelemetryConfig(
            metrics=MetricsConfig(enabled=False), logging=LoggingConfig(access_log=False)
        ),
        repo_path=base,
    )


def apply_objects(
    config: QuiverConfig,
    entities: Sequence[Entity],
    views: Sequence[FeatureView],
    services: Sequence[FeatureService] = (),
) -> Snapshot:
    """Store a registry version holding exactly these objects, as `quiver apply` would."""

    def change(proto: pb.Registry) -> str:
        proto.project.name = config.project
        del proto.entities[:]
        del proto.feature_views[:]
        del proto.feature_services[:]
        proto.entities.extend(convert.entity_to_proto(e) for e in entities)
        proto.feature_views.extend(convert.view_to_proto(v) for v in views)
        proto.feature_services.extend(convert.service_to_proto(s) for s in services)
        return "apply"

    snapshot = RegistryStore(config.registry_path).commit(change)
    assert snapshot is not None
    return snapshot


class FakeClock:
    """A settable clock for spine expiry: ``clock.now += 3600``."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextmanager
def flight_server(config: QuiverConfig, **kwargs: Any) -> Iterator[str]:
    """A running training-set Flight server on a free port; yields its location."""
    from quiver_flight.server import create_flight_server

    server, port = create_flight_server(config, "grpc://127.0.0.1:0", **kwargs)
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.shutdown()


@pytest.fixture(name="make_config")
def make_config_fixture() -> Callable[..., QuiverConfig]:
    """`make_config(base, project="test", **flight_settings)`."""
    return make_config


@pytest.fixture(name="apply_objects")
def apply_objects_fixture() -> Callable[..., Snapshot]:
    """`apply_objects(config, entities, views, services=())`."""
    return apply_objects


@pytest.fixture(name="flight_server")
def flight_server_fixture() -> Callable[..., AbstractContextManager[str]]:
    """`with flight_server(config, **create_flight_server_kwargs) as location: ...`."""
    return flight_server


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="flight_repo")
def flight_repo_fixture(tmp_path: Path) -> Callable[..., QuiverConfig]:
    """`flight_repo(**flight_settings)`: a config under tmp_path with the shared Flight test repo
    (flight_data: two views, one service, seeded history) applied."""
    from flight_data import ENTITIES, SERVICES, VIEWS, write_history

    def make(**flight: Any) -> QuiverConfig:
        config = make_config(tmp_path, **flight)
        write_history(Path(config.offline_root))
        apply_objects(config, ENTITIES, VIEWS, SERVICES)
        return config

    return make


class QuiverProcess:
    """A `quiver` command in its own process, its output kept for failure messages.

    Output is read by background threads (a full pipe would block the server),
    and waited on for ready lines: tests wait on what the process says, never on
    sleeps. JSON log lines (stderr) are parsed as they arrive.
    """

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> None:
        import subprocess
        import sys
        import threading

        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quiver_server.cli", *args], env=env, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any) -> None:
        import json

        with stream:
            self._collect(stream, json.loads)

    def _collect(self, stream: Any, parse: Callable[[str], Any]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("{"):
                    with suppress(ValueError):
                        self.events.append(parse(line))
                self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, condition: Callable[[QuiverProcess], bool], what: str,
                 timeout: float = 120.0) -> None:
        """Wait until `condition(self)` holds; fail with the output if the process exits first."""
        import time

        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                if self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise AssertionError(f"quiver exited ({self.process.returncode}) before "
                                         f"{what}:\n{self.output()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout:.0f} s:\n{self.output()}")
                self._changed.wait(min(left, 0.5))

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """JSON log events named `event` whose fields include `fields`."""
        return [e for e in self.events if e.get("event") == event
                and all(e.get(k) == v for k, v in fields.items())]

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code (and the rest of the output)."""
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code


@pytest.fixture
def quiver_process() -> Iterator[Callable[..., QuiverProcess]]:
    """`quiver_process(args, env)`: start `quiver <args>`; stopped at the end of the test."""
    started: list[QuiverProcess] = []

    def start(args: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> QuiverProcess:
        process = QuiverProcess(args, env, cwd)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
        process.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(**settings: str) -> dict[str, str]:
    """This environment for a server process: JSON logs, metrics on a free port."""
    import os

    env = {**os.environ, "QUIVER_TELEMETRY__LOGGING__FORMAT": "json",
           "QUIVER_TELEMETRY__METRICS__PORT": str(free_port()), **settings}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@pytest.fixture(name="server_env")
def server_env_fixture() -> Callable[..., dict[str, str]]:
    """`server_env(**QUIVER_settings)`: an environment for a server process."""
    return server_env


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """`free_port()`: a TCP port nothing listens on right now."""
    return free_port


@pytest.fixture
def serve_workers(
    quiver_process: Callable[..., QuiverProcess],
) -> Callable[..., tuple[QuiverProcess, str, dict[str, str]]]:
    """`serve_workers(config, workers=2)`: `quiver serve --workers N` on free ports, each
    worker's ready line seen; returns the process, its target and its environment."""

    def start(config: QuiverConfig, workers: int = 2) -> tuple[QuiverProcess, str, dict[str, str]]:
        env, port = server_env(), free_port()
        server = quiver_process(
            ["--repo", str(config.repo_path), "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers)], env, Path(__file__).parents[2],
        )
        server.wait_for(
            lambda p: {e.get("worker") for e in p.logged("serving")} == set(range(workers)),
            f"a ready line from each of {workers} workers",
        )
        return server, f"127.0.0.1:{port}", env

    return start
