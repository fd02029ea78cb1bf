"""The gRPC serving path against a real server on an ephemeral port."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quiver import OnlineClient
from quiver.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from quiver.registry.v1 import registry_service_pb2 as reg_pb
from quiver.registry.v1 import registry_service_pb2_grpc as reg_grpc
from quiver_server.config import QuiverConfig
from quiver_server.online.base import ViewRead, ViewReadResult, WriteBatch
from quiver_server.online.keys import encode_keys
from quiver_server.online.sqlite import SqliteOnlineStore
from quiver_server.registry.store import RegistryStore
from quiver_server.serving.server import ServingServer, create_server

FEATURE_COUNT = 20


class FailingStore(SqliteOnlineStore):
    """A real SQLite store whose reads can be switched to fail, as a lost disk would."""

    failing = False

    def read(self, reads: Any) -> list[ViewReadResult]:
        if self.failing:
            raise UnavailableError("online store sqlite unavailable: disk I/O error")
        return super().read(reads)


@pytest.fixture
def server(materialized: QuiverConfig) -> Iterator[tuple[ServingServer, str, FailingStore]]:
    store = FailingStore(materialized.resolve(materialized.online_store.path))  # type: ignore[union-attr]
    app, port = create_server(materialized, "127.0.0.1", 0, store=store)
    with app:
        yield app, f"127.0.0.1:{port}", store


@pytest.fixture
def client(server: tuple[ServingServer, str, FailingStore]) -> Iterator[OnlineClient]:
    with OnlineClient(server[1]) as c:
        yield c


def test_feature_service_returns_every_feature(client: OnlineClient) -> None:
    result = client.get_online_features(
        feature_service="fraud_model_v1", entities={"user_id": [1, 2], "merchant_id": [3, 4]}
    )
    assert len(result.feature_names) == FEATURE_COUNT
    assert len(result) == 2
    data = result.to_dict()
    assert data["user_id"] == [1, 2]
    for name in ("txn_count_24h", "age", "merchant_category", "is_verified"):
        assert all(v is not None for v in data[name]), name
    assert set(result.statuses("txn_count_24h")) == {"PRESENT"}
    stamps = result.event_timestamps("txn_count_24h")
    assert all(s is not None and s.tzinfo is not None for s in stamps)


def test_values_match_the_latest_history_row(materialized: QuiverConfig, client: OnlineClient) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    history = pq.read_table(materialized.repo_path / "data" / "user_transaction_stats")
    rows = history.filter(pc.equal(history["user_id"], 7)).sort_by(
        [("event_timestamp", "descending"), ("created", "descending")]
    )
    latest = rows.slice(0, 1).to_pylist()[0]
    result = client.get_online_features(
        features=["user_transaction_stats:txn_amount_sum_24h", "user_transaction_stats:txn_count_7d"],
        entities={"user_id": [7]},
    )
    assert result.values("txn_amount_sum_24h") == [latest["txn_amount_sum_24h"]]
    assert result.values("txn_count_7d") == [latest["txn_count_7d"]]
    assert result.event_timestamps("txn_count_7d") == [latest["event_timestamp"]]


def test_statuses_not_found_null_and_outside_max_age(
    materialized: QuiverConfig, server: tuple[ServingServer, str, FailingStore], client: OnlineClient
) -> None:
    _, _, store = server
    snapshot = RegistryStore(materialized.registry_path).latest()
    stats = snapshot.view_table("user_transaction_stats")
    profile = snapshot.view_table("user_profile")
    old = int((datetime.now(UTC) - timedelta(days=5)).timestamp() * 1_000_000)
    # User 9001: an old stats row (ttl is 2 days) and a profile with a null credit score.
    store.write(stats, WriteBatch(
        keys=encode_keys(stats.view.join_keys, [[9001]]), event_ts=[old], created_ts=[old],
        features={f: [1 if "count" in f or "distinct" in f else 1.5 if "amount" in f else "US"]
                  for f in stats.view.feature_names},
    ))
    store.write(profile, WriteBatch(
        keys=encode_keys(profile.view.join_keys, [[9001]]), event_ts=[old], created_ts=[old],
        features={"age": [40], "account_age_days": [10], "credit_score": [None],
                  "is_verified": [True], "country": ["US"], "signup_channel": ["web"]},
    ))
    result = client.get_online_features(
        features=["user_transaction_stats:txn_count_24h", "user_profile:credit_score",
                  "user_profile:age"],
        entities={"user_id": [9001, 424242]},
    )
    assert result.statuses("txn_count_24h") == ["OUTSIDE_MAX_AGE", "NOT_FOUND"]
    assert result.values("txn_count_24h") == [None, None]
    # user_profile has ttl 0 (unlimited): an old row is still present.
    assert result.statuses("age") == ["PRESENT", "NOT_FOUND"]
    assert result.values("age") == [40, None]
    assert result.statuses("credit_score") == ["NULL_VALUE", "NOT_FOUND"]
    assert result.event_timestamps("age")[1] is None


def test_request_order_duplicates_and_full_names(client: OnlineClient) -> None:
    result = client.get_online_features(
        features=["user_profile:age", "user_transaction_stats:txn_count_24h"],
        entities={"user_id": [3, 1, 3]},
        full_feature_names=True,
    )
    assert result.feature_names == ["user_profile__age", "user_transaction_stats__txn_count_24h"]
    ages = result.values("user_profile__age")
    assert ages[0] == ages[2]
    table = result.to_arrow(include_metadata=True)
    assert table.column_names[:2] == ["user_id", "user_profile__age"]
    assert "user_profile__age__status" in table.column_names
    frame = result.to_pandas()
    assert list(frame["user_id"]) == [3, 1, 3]


def test_numpy_and_arrow_entity_columns(client: OnlineClient) -> None:
    import numpy as np
    import pyarrow as pa

    a = client.get_online_features(features=["user_profile:age"], entities={"user_id": np.array([1, 2])})
    b = client.get_online_features(features=["user_profile:age"], entities={"user_id": pa.array([1, 2])})
    assert a.values("age") == b.values("age")


def _violations(exc: InvalidArgumentError) -> dict[str, str]:
    return {v.field: v.description for v in exc.violations}


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"features": ["user_profile:age"], "entities": {}}, "entities.user_id", "missing join key"),
        ({"features": ["user_profile:age"], "entities": {"user_id": [1], "shop": [2]}},
         "entities.shop", "not a join key of the requested feature views; expected: user_id"),
        ({"features": ["user_profile:age"], "entities": {"user_id": ["1"]}},
         "entities.user_id", "join key is int64; send int64_values or int32_values, got string_values"),
        ({"feature_service": "fraud_model_v1", "entities": {"user_id": [1, 2], "merchant_id": [1]}},
         "entities", "same length, got merchant_id=1, user_id=2"),
        ({"features": ["user_profile:age"], "entities": {"user_id": []}},
         "entities", "column 'user_id' is empty"),
        ({"features": ["user_profile.age"], "entities": {"user_id": [1]}},
         "features[0]", "must look like 'feature_view:feature'"),
        ({"features": ["user_profile:age", "user_profile:age"], "entities": {"user_id": [1]}},
         "features[1]", "requested more than once"),
    ],
)
def test_bad_requests_are_invalid_argument(
    client: OnlineClient, kwargs: dict[str, Any], field: str, text: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.get_online_features(**kwargs)
    assert text in _violations(info.value)[field]


def test_entity_limit(materialized: QuiverConfig, client: OnlineClient) -> None:
    limit = materialized.serving.max_entities
    with pytest.raises(InvalidArgumentError) as info:
        client.get_online_features(features=["user_profile:age"], entities={"user_id": list(range(limit + 1))})
    assert info.value.grpc_status == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {limit} allowed" in _violations(info.value)["entities"]


def test_empty_entities_over_the_wire(server: tuple[ServingServer, str, FailingStore]) -> None:
    from quiver.serving.v1 import serving_service_pb2 as pb
    from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc
    from quiver.types.v1 import value_pb2

    with grpc.insecure_channel(server[1]) as channel:
        stub = pb_grpc.FeatureServingServiceStub(channel)
        request = pb.GetOnlineFeaturesRequest(features=pb.FeatureList(refs=["user_profile:age"]))
        request.entities["user_id"].CopyFrom(value_pb2.Values(int64_values=value_pb2.Int64Array()))
        with pytest.raises(grpc.RpcError) as info:
            stub.GetOnlineFeatures(request, timeout=5)
    call = info.value
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    status = status_pb2.Status()
    details = dict(call.trailing_metadata())["grpc-status-details-bin"]  # type: ignore[attr-defined]
    status.ParseFromString(details)
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert bad.field_violations[0].field == "entities"
    assert bad.field_violations[0].description == "request at least one entity"


@pytest.mark.parametrize(
    ("kwargs", "reason", "text"),
    [
        ({"features": ["nope:age"]}, "FEATURE_VIEW_NOT_FOUND", "feature view 'nope' does not exist"),
        ({"features": ["user_profile:nope"]}, "FEATURE_NOT_FOUND", "has no feature 'nope'"),
        ({"feature_service": "nope"}, "FEATURE_SERVICE_NOT_FOUND", "feature service 'nope'"),
    ],
)
def test_unknown_names_are_not_found(
    client: OnlineClient, kwargs: dict[str, Any], reason: str, text: str
) -> None:
    with pytest.raises(NotFoundError, match=text) as info:
        client.get_online_features(entities={"user_id": [1]}, **kwargs)
    assert info.value.reason == reason
    assert info.value.details


def test_store_failure_is_unavailable_and_server_recovers(
    server: tuple[ServingServer, str, FailingStore], client: OnlineClient
) -> None:
    store = server[2]
    store.failing = True
    with pytest.raises(UnavailableError, match="disk I/O error"):
        client.get_online_features(features=["user_profile:age"], entities={"user_id": [1]})
    store.failing = False
    assert client.get_online_features(features=["user_profile:age"], entities={"user_id": [1]}).values("age")[0]


def test_deadline_exceeded(server: tuple[ServingServer, str, FailingStore], client: OnlineClient) -> None:
    store = server[2]
    original = store.read

    def slow(reads: list[ViewRead]) -> list[ViewReadResult]:
        import time

        time.sleep(0.5)
        return original(reads)

    store.read = slow  # type: ignore[method-assign]
    with pytest.raises(DeadlineExceededError):
        client.get_online_features(features=["user_profile:age"], entities={"user_id": [1]}, timeout=0.05)


def test_health_and_reflection(server: tuple[ServingServer, str, FailingStore]) -> None:
    with grpc.insecure_channel(server[1]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "quiver.serving.v1.FeatureServingService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"quiver.serving.v1.FeatureServingService", "quiver.registry.v1.RegistryService",
            "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha(server: tuple[ServingServer, str, FailingStore], version: str) -> None:
    """Both reflection services answer; v1 is what current grpcurl and Postman ask for."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.Default()
    package = f"grpc.reflection.{version}"
    request_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{package}.ServerReflectionRequest"))
    response_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{package}.ServerReflectionResponse"))
    with grpc.insecure_channel(server[1]) as channel:
        call = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        requests = [
            request_cls(list_services=""),
            request_cls(file_containing_symbol="quiver.serving.v1.FeatureServingService"),
            request_cls(file_containing_symbol=f"{package}.ServerReflection"),
        ]
        listed, serving, itself = list(call(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"quiver.serving.v1.FeatureServingService", "quiver.registry.v1.RegistryService",
            "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    for reply, wanted in ((serving, "quiver.serving.v1"), (itself, package)):
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in reply.file_descriptor_response.file_descriptor_proto]
        assert wanted in {f.package for f in files}, reply


def test_registry_service(server: tuple[ServingServer, str, FailingStore]) -> None:
    with grpc.insecure_channel(server[1]) as channel:
        stub = reg_grpc.RegistryServiceStub(channel)
        projects = stub.ListProjects(reg_pb.ListProjectsRequest(), timeout=5)
        assert [p.name for p in projects.projects] == ["fraud_detection"]
        assert projects.registry_version >= 1
        views = stub.ListFeatureViews(reg_pb.ListFeatureViewsRequest(), timeout=5)
        assert [v.name for v in views.feature_views] == ["merchant_stats", "user_profile", "user_transaction_stats"]
        view = stub.GetFeatureView(reg_pb.GetFeatureViewRequest(name="user_profile"), timeout=5)
        assert view.feature_view.owner == "identity-team@example.com"
        assert len(view.meta.layout.bin_names) == 6
        entities = stub.ListEntities(reg_pb.ListEntitiesRequest(project="fraud_detection"), timeout=5)
        assert [e.name for e in entities.entities] == ["merchant", "user"]
        service = stub.GetFeatureService(reg_pb.GetFeatureServiceRequest(name="user_risk"), timeout=5)
        assert len(service.feature_service.projections) == 2
        assert stub.GetEntity(reg_pb.GetEntityRequest(name="user"), timeout=5).entity.join_keys[0].name == "user_id"
        with pytest.raises(grpc.RpcError) as info:
            stub.GetFeatureView(reg_pb.GetFeatureViewRequest(name="nope"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as info:
            stub.ListFeatureViews(reg_pb.ListFeatureViewsRequest(project="other"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as info:
            stub.GetEntity(reg_pb.GetEntityRequest(name=""), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_server_picks_up_a_new_registry_version(
    materialized: QuiverConfig, server: tuple[ServingServer, str, FailingStore], client: OnlineClient
) -> None:
    from quiver_server.repo import apply

    path = materialized.repo_path / "features.py"
    path.write_text(path.read_text().replace('name="user_risk"', 'name="user_risk_v2"'))
    apply(materialized)
    assert server[0].registry.refresh()
    result = client.get_online_features(feature_service="user_risk_v2", entities={"user_id": [1]})
    assert len(result.feature_names) == 5


def test_a_store_failure_never_shows_the_client_a_server_path(materialized: QuiverConfig) -> None:
    """The SQLite file stops being a database (a disk gone bad): the caller learns that the
    online store is unavailable and which configured store, not where the server keeps it."""
    app, port = create_server(materialized, "127.0.0.1", 0)  # the store quiver.yaml names
    with app, OnlineClient(f"127.0.0.1:{port}") as client:
        database = materialized.resolve(materialized.online_store.path)  # type: ignore[union-attr]
        with open(database, "r+b") as file:  # handler threads open their own connections
            file.write(b"not a database" * 512)
        with pytest.raises(UnavailableError) as raised:
            client.get_online_features(features=["user_profile:age"], entities={"user_id": [1]})
    message = str(raised.value)
    assert str(materialized.repo_path) not in message and "/" + "tmp" not in message, message
    assert repr(materialized.online_store.path) in message, message  # type: ignore[union-attr]
