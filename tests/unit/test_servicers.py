"""The gRPC servicers in grpcio-testing's in-process server: statuses, details, callbacks.

No port is opened: grpc_testing drives the servicer methods with its
ServicerContext and hands back the status code and message the client would
see. The real store and registry files are used. (grpc_testing drops trailing
metadata on abort, so the rich details are checked over a real channel in
tests/integration/test_serving_grpc.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest

from quiver import Entity, FeatureService, FeatureView, Field, Int64, ParquetSource, String
from quiver.registry.v1 import registry_service_pb2 as registry_pb
from quiver.serving.v1 import serving_service_pb2 as serving_pb
from quiver.types.v1 import value_pb2
from quiver_server.config import QuiverConfig, ServingConfig
from quiver_server.online.sqlite import SqliteOnlineStore
from quiver_server.registry.provider import RegistryProvider
from quiver_server.registry.store import RegistryStore
from quiver_server.serving.feature_service import FeatureServingServicer
from quiver_server.serving.online_read import OutputColumn
from quiver_server.serving.registry_service import RegistryServicer

USER = Entity(name="user", join_keys=(Field("user_id", Int64),))
STATS = FeatureView(
    name="stats", entities=[USER], schema=[Field("count", Int64), Field("label", String)],
    source=ParquetSource(path="stats"),
)
SERVING = serving_pb.DESCRIPTOR.services_by_name["FeatureServingService"]
REGISTRY = registry_pb.DESCRIPTOR.services_by_name["RegistryService"]


class BrokenStore(SqliteOnlineStore):
    """A real store whose reads hit a bug."""

    def read(self, reads: Any) -> Any:
        raise RuntimeError("/srv/secret/path: index out of range")


@pytest.fixture
def config(tmp_path: Path, make_registry: Any) -> QuiverConfig:
    config = QuiverConfig(project="shop", repo_path=tmp_path)
    make_registry(config, [USER], [STATS], [FeatureService(name="svc", features=[STATS])])
    return config


@pytest.fixture
def served() -> list[list[OutputColumn]]:
    return []


@pytest.fixture
def server(config: QuiverConfig, tmp_path: Path, served: list[list[OutputColumn]]
           ) -> Iterator[grpc_testing.Server]:
    registry = RegistryProvider(RegistryStore(config.registry_path))
    store = SqliteOnlineStore(str(tmp_path / "online.db"))
    yield grpc_testing.server_from_dictionary({
        SERVING: FeatureServingServicer(registry, store, ServingConfig(max_entities=10),
                                        config.offline_root, served=served.append),
        REGISTRY: RegistryServicer(registry),
    }, grpc_testing.strict_real_time())
    store.close()


def call(server: grpc_testing.Server, service: Any, method: str, request: Any
         ) -> tuple[Any, grpc.StatusCode, str]:
    rpc = server.invoke_unary_unary(service.methods_by_name[method], (), request, None)
    response, _, code, details = rpc.termination()
    return response, code, details


def test_a_lookup_is_answered_and_its_graded_columns_observed(
    server: grpc_testing.Server, served: list[list[OutputColumn]]
) -> None:
    request = serving_pb.GetOnlineFeaturesRequest(
        feature_service="svc",
        entities={"user_id": value_pb2.Values(int64_values=value_pb2.Int64Array(values=[1, 2]))},
    )
    response, code, _ = call(server, SERVING, "GetOnlineFeatures", request)
    assert code is grpc.StatusCode.OK
    assert list(response.feature_names) == ["count", "label"] and response.entity_count == 2
    [columns] = served
    assert [c.statuses for c in columns] == [[serving_pb.FEATURE_STATUS_NOT_FOUND] * 2] * 2


def test_bad_entities_name_the_field(server: grpc_testing.Server) -> None:
    request = serving_pb.GetOnlineFeaturesRequest(
        features=serving_pb.FeatureList(refs=["stats:count"]),
        entities={"user_id": value_pb2.Values(string_values=value_pb2.StringArray(values=["x"]))},
    )
    _, code, details = call(server, SERVING, "GetOnlineFeatures", request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("entities.user_id: join key is int64")


def test_an_unknown_push_target_is_a_bad_request(server: grpc_testing.Server) -> None:
    request = serving_pb.PushFeaturesRequest(feature_view="stats", to=42, columns={
        "user_id": value_pb2.Values(int64_values=value_pb2.Int64Array(values=[1])),
    })
    _, code, details = call(server, SERVING, "PushFeatures", request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("to: 42 is not a push target; allowed: PUSH_TARGET_UNSPECIFIED")


def test_a_bug_is_internal_and_leaks_nothing(
    config: QuiverConfig, tmp_path: Path
) -> None:
    registry = RegistryProvider(RegistryStore(config.registry_path))
    store = BrokenStore(str(tmp_path / "broken.db"))
    server = grpc_testing.server_from_dictionary({
        SERVING: FeatureServingServicer(registry, store, ServingConfig(max_entities=10),
                                        config.offline_root),
    }, grpc_testing.strict_real_time())
    request = serving_pb.GetOnlineFeaturesRequest(
        feature_service="svc",
        entities={"user_id": value_pb2.Values(int64_values=value_pb2.Int64Array(values=[1]))},
    )
    _, code, details = call(server, SERVING, "GetOnlineFeatures", request)
    store.close()
    assert code is grpc.StatusCode.INTERNAL
    assert details == "internal error in GetOnlineFeatures"  # nothing of the bug's own text


def test_registry_lookups_and_not_found_details(server: grpc_testing.Server) -> None:
    response, code, _ = call(server, REGISTRY, "ListFeatureViews",
                             registry_pb.ListFeatureViewsRequest())
    assert code is grpc.StatusCode.OK and [v.name for v in response.feature_views] == ["stats"]
    _, code, details = call(server, REGISTRY, "GetFeatureView",
                            registry_pb.GetFeatureViewRequest(name="nope"))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "feature view 'nope' does not exist")
    _, code, details = call(server, REGISTRY, "GetFeatureView", registry_pb.GetFeatureViewRequest())
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "name: must not be empty")


def test_registry_servicer_before_any_apply(tmp_path: Path) -> None:
    registry = RegistryProvider(RegistryStore(tmp_path / "empty"))
    server = grpc_testing.server_from_dictionary({REGISTRY: RegistryServicer(registry)},
                                                 grpc_testing.strict_real_time())
    _, code, details = call(server, REGISTRY, "ListProjects", registry_pb.ListProjectsRequest())
    assert code is grpc.StatusCode.UNAVAILABLE and "run `quiver apply`" in details
