"""Integration fixtures: feature repos built from SDK objects, and real Flight servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
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
