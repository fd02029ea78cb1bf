"""Both servers start and keep answering from the newest registry version that verifies."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import grpc
from pyarrow import flight

from quiver import OnlineClient
from quiver.registry.v1 import registry_service_pb2 as reg_pb
from quiver.registry.v1 import registry_service_pb2_grpc as reg_grpc
from quiver_server.config import QuiverConfig
from quiver_server.registry.store import RegistryStore
from quiver_server.serving.server import create_server


def damage_newest(config: QuiverConfig) -> int:
    store = RegistryStore(config.registry_path)
    bad = store.latest_version()
    file = config.registry_path / f"v{bad:08d}.pb"
    file.write_bytes(file.read_bytes()[:-7])
    return bad


def test_serving_starts_on_the_last_good_version_and_ignores_new_bad_ones(
    materialized: QuiverConfig,
) -> None:
    bad = damage_newest(materialized)
    app, port = create_server(materialized, "127.0.0.1", 0)
    with app, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reg_grpc.RegistryServiceStub(channel)
        assert stub.ListProjects(reg_pb.ListProjectsRequest(), timeout=5).registry_version == bad - 1
        with OnlineClient(f"127.0.0.1:{port}") as client:
            result = client.get_online_features(features=["user_profile:age"], entities={"user_id": [1]})
            assert result.statuses("age") == ["PRESENT"]
        (materialized.registry_path / f"v{bad + 1:08d}.pb").write_bytes(b"\x07QVR garbage")
        assert app.registry.refresh() is False
        assert stub.ListProjects(reg_pb.ListProjectsRequest(), timeout=5).registry_version == bad - 1


def test_flight_plans_on_the_last_good_version(
    materialized: QuiverConfig, flight_server: Callable[..., AbstractContextManager[str]]
) -> None:
    damage_newest(materialized)
    with flight_server(materialized) as location:
        client = flight.connect(location)
        names = {info.descriptor.command for info in client.list_flights()}
        client.close()
    assert len(names) >= 4  # every feature service and view of the good version
