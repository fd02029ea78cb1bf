"""With auth on, a caller learns nothing of a name it may not DESCRIBE: a request naming a
view that exists (but is forbidden) gets the very answer one naming a view that does not
exist gets, whatever else the request names and in whatever order.

The servicers run in grpcio-testing's in-process server as one principal, `bob`, who may
DESCRIBE and READ_ONLINE the view `public` only; `secret` exists, `ghost` does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest

from quiver import (
    Action,
    Entity,
    FeatureView,
    Field,
    Int64,
    OnDemandFeatureView,
    ParquetSource,
    Permission,
    Resource,
    String,
)
from quiver.registry.v1 import registry_pb2
from quiver.registry.v1 import registry_service_pb2 as registry_service_pb
from quiver.serving.v1 import serving_service_pb2 as serving_pb
from quiver.types.v1 import value_pb2
from quiver_server.auth.access import AccessControl
from quiver_server.auth.principal import CallAccess, Principal, enter_call, exit_call
from quiver_server.config import QuiverConfig, ServingConfig
from quiver_server.online.sqlite import SqliteOnlineStore
from quiver_server.registry import convert, convert_transforms
from quiver_server.registry.provider import RegistryProvider
from quiver_server.registry.store import RegistryStore
from quiver_server.serving.feature_service import FeatureServingServicer
from quiver_server.serving.registry_service import RegistryServicer
from quiver_server.transforms.functions import source_hash

USER = Entity(name="user", join_keys=(Field("user_id", Int64),))
PUBLIC = FeatureView(
    name="public", entities=[USER], schema=[Field("count", Int64), Field("label", String)],
    source=ParquetSource(path="public"),
)
SECRET = FeatureView(
    name="secret", entities=[USER], schema=[Field("count", Int64)],
    source=ParquetSource(path="secret"),
)
# DOUBLED reads `public` only, which bob may read; SPY reads `secret`, which bob may not.
# (Their function is never called here: any importable one whose source hash is stored.)
DOUBLED = OnDemandFeatureView(name="doubled", sources=[PUBLIC[["count"]]],
                              schema=[Field("twice", Int64)], function="json:dumps")
SPY = OnDemandFeatureView(name="spy", sources=[SECRET[["count"]]],
                          schema=[Field("twice", Int64)], function="json:dumps")
READERS = Permission(name="readers", groups=["readers"],
                     actions=[Action.DESCRIBE, Action.READ_ONLINE],
                     resources=[Resource.feature_view("public")])
BOB = Principal("bob", frozenset({"readers"}), "static")
MALLORY = Principal("mallory", frozenset(), "static")  # granted nothing at all
SERVING = serving_pb.DESCRIPTOR.services_by_name["FeatureServingService"]
REGISTRY = registry_service_pb.DESCRIPTOR.services_by_name["RegistryService"]


class AsBob(FeatureServingServicer):
    """The servicer, called as `BOB` (what the auth interceptor does for a real call)."""

    def _as_bob(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        token = enter_call(CallAccess(BOB, method, "grpc"))
        try:
            return getattr(super(), method)(request, context)
        finally:
            exit_call(token)

    def GetOnlineFeatures(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._as_bob("GetOnlineFeatures", request, context)

    def DeleteEntities(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._as_bob("DeleteEntities", request, context)


class RegistryAsMallory(RegistryServicer):
    """The registry servicer, called as `MALLORY`."""

    def ListFeatureViews(self, request: Any, context: grpc.ServicerContext) -> Any:
        token = enter_call(CallAccess(MALLORY, "ListFeatureViews", "grpc"))
        try:
            return super().ListFeatureViews(request, context)
        finally:
            exit_call(token)

    def GetFeatureView(self, request: Any, context: grpc.ServicerContext) -> Any:
        token = enter_call(CallAccess(MALLORY, "GetFeatureView", "grpc"))
        try:
            return super().GetFeatureView(request, context)
        finally:
            exit_call(token)

    def GetOnDemandFeatureView(self, request: Any, context: grpc.ServicerContext) -> Any:
        token = enter_call(CallAccess(MALLORY, "GetOnDemandFeatureView", "grpc"))
        try:
            return super().GetOnDemandFeatureView(request, context)
        finally:
            exit_call(token)


@pytest.fixture
def server(tmp_path: Path, make_registry: Any) -> Iterator[grpc_testing.Server]:
    config = QuiverConfig(project="shop", repo_path=tmp_path)
    make_registry(config, [USER], [PUBLIC, SECRET])

    def permit(proto: registry_pb2.Registry) -> str:
        proto.permissions.append(convert.permission_to_proto(READERS, "shop"))
        proto.on_demand_feature_views.extend(
            convert_transforms.on_demand_view_to_proto(v, {"json:dumps": source_hash(json.dumps)})
            for v in (DOUBLED, SPY))
        return "apply"

    RegistryStore(config.registry_path).commit(permit)
    registry = RegistryProvider(RegistryStore(config.registry_path))
    store = SqliteOnlineStore(str(tmp_path / "online.db"))
    yield grpc_testing.server_from_dictionary({
        SERVING: AsBob(registry, store, ServingConfig(max_entities=10), config.offline_root,
                       access=AccessControl(enabled=True)),
        REGISTRY: RegistryAsMallory(registry, access=AccessControl(enabled=True)),
    }, grpc_testing.strict_real_time())
    store.close()


def _call(server: grpc_testing.Server, method: str, request: Any) -> tuple[grpc.StatusCode, str]:
    rpc = server.invoke_unary_unary(SERVING.methods_by_name[method], (), request, None)
    _, _, code, details = rpc.termination()
    return code, details


def _lookup(server: grpc_testing.Server, refs: list[str]) -> tuple[grpc.StatusCode, str]:
    return _call(server, "GetOnlineFeatures", serving_pb.GetOnlineFeaturesRequest(
        features=serving_pb.FeatureList(refs=refs),
        entities={"user_id": value_pb2.Values(int64_values=value_pb2.Int64Array(values=[1]))},
    ))


def _same_answer(server: grpc_testing.Server, existing: list[str], missing: list[str]) -> None:
    """`existing` names `secret`, `missing` names `ghost` in its place: one answer."""
    code, details = _lookup(server, existing)
    ghost_code, ghost_details = _lookup(server, missing)
    assert (code, details.replace("secret", "ghost")) == (ghost_code, ghost_details)
    assert code is grpc.StatusCode.PERMISSION_DENIED


def test_a_later_typo_in_a_describable_view_tells_nothing_of_an_earlier_hidden_view(
    server: grpc_testing.Server,
) -> None:
    _same_answer(server, ["secret:count", "public:nope"], ["ghost:count", "public:nope"])
    # Alone, the typo in a view bob may describe is NOT_FOUND, as without auth.
    assert _lookup(server, ["public:nope"])[0] is grpc.StatusCode.NOT_FOUND


def test_on_demand_features_are_judged_by_the_stored_features_they_read(
    server: grpc_testing.Server,
) -> None:
    # Allowed (it reads public), so the typo after it is what the answer is about.
    code, details = _lookup(server, ["doubled:twice", "public:nope"])
    assert code is grpc.StatusCode.NOT_FOUND, details
    # Reading secret, like secret itself: denied, the same whether or not it exists.
    code, details = _lookup(server, ["spy:twice", "public:nope"])
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert (code, details.replace("spy", "ghost")) == _lookup(server, ["ghost:twice", "public:nope"])


def test_the_denial_names_the_first_forbidden_name_whether_or_not_it_exists(
    server: grpc_testing.Server,
) -> None:
    # Both forbidden: the first one named is the one denied, existing or not.
    code, details = _lookup(server, ["secret:count", "ghost:count"])
    assert code is grpc.StatusCode.PERMISSION_DENIED and "'secret:count'" in details
    code, details = _lookup(server, ["ghost:count", "secret:count"])
    assert code is grpc.StatusCode.PERMISSION_DENIED and "'ghost:count'" in details


def test_a_malformed_reference_is_refused_before_any_name_is_looked_up(
    server: grpc_testing.Server,
) -> None:
    for refs in (["secret:count", "no-colon"], ["ghost:count", "no-colon"]):
        code, details = _lookup(server, refs)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("features[1]: feature reference 'no-colon'")


def test_a_plan_that_cannot_be_served_says_so_only_to_who_may_read_it_all(
    server: grpc_testing.Server,
) -> None:
    # Two features called "count": an error naming both views, but only once every
    # feature is allowed; before that it is the denial a missing name gets.
    _same_answer(server, ["secret:count", "public:count"], ["ghost:count", "public:count"])
    code, details = _lookup(server, ["public:count", "public:label"])
    assert code is grpc.StatusCode.OK


def _delete(server: grpc_testing.Server, views: list[str], **keys: value_pb2.Values
            ) -> tuple[grpc.StatusCode, str]:
    return _call(server, "DeleteEntities",
                 serving_pb.DeleteEntitiesRequest(feature_views=views, entities=keys))


@pytest.mark.parametrize("keys", [
    {"merchant_id": value_pb2.Values(int64_values=value_pb2.Int64Array(values=[1]))},
    {"user_id": value_pb2.Values(string_values=value_pb2.StringArray(values=["x"]))},
], ids=["a join key the view lacks", "a join key of the wrong type"])
def test_a_delete_from_a_hidden_view_is_denied_before_its_keys_are_checked(
    server: grpc_testing.Server, keys: dict[str, value_pb2.Values],
) -> None:
    code, details = _delete(server, ["secret"], **keys)
    assert (code, details.replace("secret", "ghost")) == _delete(server, ["ghost"], **keys)
    assert code is grpc.StatusCode.PERMISSION_DENIED


def test_a_delete_names_the_first_forbidden_view_whether_or_not_it_exists(
    server: grpc_testing.Server,
) -> None:
    user = value_pb2.Values(int64_values=value_pb2.Int64Array(values=[1]))
    for views in (["secret", "ghost"], ["ghost", "secret"], ["spectre", "ghost"]):
        code, details = _delete(server, views, user_id=user)
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert f"feature view '{views[0]}'" in details, (views, details)


def test_the_served_project_cannot_be_guessed_by_who_may_describe_nothing(
    server: grpc_testing.Server,
) -> None:
    def ask(method: str, request: Any) -> tuple[Any, grpc.StatusCode, str]:
        rpc = server.invoke_unary_unary(REGISTRY.methods_by_name[method], (), request, None)
        response, _, code, details = rpc.termination()
        return response, code, details

    answers = []
    for project in ("shop", "payroll"):
        listed, code, details = ask("ListFeatureViews",
                                    registry_service_pb.ListFeatureViewsRequest(project=project))
        answers.append((code, details, len(listed.feature_views) if listed else None))
        _, code, details = ask("GetFeatureView", registry_service_pb.GetFeatureViewRequest(
            project=project, name="public"))
        answers.append((code, details))
    assert answers[:2] == answers[2:]
    assert answers[0] == (grpc.StatusCode.OK, "", 0)
    assert answers[1][0] is grpc.StatusCode.PERMISSION_DENIED


def test_a_denied_on_demand_feature_is_named_not_the_hidden_feature_it_reads(
    server: grpc_testing.Server,
) -> None:
    code, details = _lookup(server, ["spy:twice"])
    assert code is grpc.StatusCode.PERMISSION_DENIED, details
    assert "secret" not in details and "'spy:twice'" in details
    assert (code, details.replace("spy", "ghost")) == _lookup(server, ["ghost:twice"])


def test_an_on_demand_view_is_not_told_to_exist_to_who_may_not_describe_it(
    server: grpc_testing.Server,
) -> None:
    def ask(name: str) -> tuple[grpc.StatusCode, str]:
        rpc = server.invoke_unary_unary(
            REGISTRY.methods_by_name["GetOnDemandFeatureView"], (),
            registry_service_pb.GetOnDemandFeatureViewRequest(name=name), None)
        _, _, code, details = rpc.termination()
        return code, details

    code, details = ask("spy")
    assert code is grpc.StatusCode.PERMISSION_DENIED, details
    assert ask("ghost") == (code, details.replace("spy", "ghost"))
