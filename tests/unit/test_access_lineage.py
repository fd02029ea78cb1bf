"""With auth on, GetLineage without a kind tells a caller nothing of names it may not
DESCRIBE: a hidden view gets the answer a missing name gets, and a hidden feature
service sharing a visible view's name does not make the name ambiguous.

The registry servicer runs in grpcio-testing's in-process server as `bob`, who may
DESCRIBE the view `public` only; the view `secret` and the service `public` exist,
`ghost` does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest

from quiver import (
    Action,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Int64,
    ParquetSource,
    Permission,
    Resource,
)
from quiver.registry.v1 import registry_pb2
from quiver.registry.v1 import registry_service_pb2 as pb
from quiver_server.auth.access import AccessControl
from quiver_server.auth.principal import CallAccess, Principal, enter_call, exit_call
from quiver_server.config import QuiverConfig
from quiver_server.governance.paths import GovernancePaths
from quiver_server.registry import convert
from quiver_server.registry.provider import RegistryProvider
from quiver_server.registry.store import RegistryStore
from quiver_server.serving.registry_service import RegistryServicer

USER = Entity(name="user", join_keys=(Field("user_id", Int64),))
PUBLIC = FeatureView(name="public", entities=[USER], schema=[Field("count", Int64)],
                     source=ParquetSource(path="public"))
SECRET = FeatureView(name="secret", entities=[USER], schema=[Field("count", Int64)],
                     source=ParquetSource(path="secret"))
SERVICE = FeatureService(name="public", features=[SECRET])
READERS = Permission(name="readers", groups=["readers"], actions=[Action.DESCRIBE],
                     resources=[Resource.feature_view("public")])
BOB = Principal("bob", frozenset({"readers"}), "static")
REGISTRY = pb.DESCRIPTOR.services_by_name["RegistryService"]


class AsBob(RegistryServicer):
    def GetLineage(self, request: Any, context: grpc.ServicerContext) -> Any:
        token = enter_call(CallAccess(BOB, "GetLineage", "grpc"))
        try:
            return super().GetLineage(request, context)
        finally:
            exit_call(token)


@pytest.fixture
def server(tmp_path: Path, make_registry: Any) -> Iterator[grpc_testing.Server]:
    config = QuiverConfig(project="shop", repo_path=tmp_path)
    make_registry(config, [USER], [PUBLIC, SECRET], [SERVICE])

    def permit(proto: registry_pb2.Registry) -> str:
        proto.permissions.append(convert.permission_to_proto(READERS, "shop"))
        return "apply"

    RegistryStore(config.registry_path).commit(permit)
    registry = RegistryProvider(RegistryStore(config.registry_path))
    yield grpc_testing.server_from_dictionary({
        REGISTRY: AsBob(registry, access=AccessControl(enabled=True),
                        governance=GovernancePaths.of(config)),
    }, grpc_testing.strict_real_time())


def lineage(server: grpc_testing.Server, name: str, kind: str = "") -> tuple[Any, grpc.StatusCode, str]:
    rpc = server.invoke_unary_unary(REGISTRY.methods_by_name["GetLineage"], (),
                                    pb.GetLineageRequest(name=name, kind=kind), None)
    response, _, code, details = rpc.termination()
    return response, code, details


def test_a_hidden_view_is_answered_as_a_missing_name(server: grpc_testing.Server) -> None:
    _, code, details = lineage(server, "secret")
    assert code is grpc.StatusCode.PERMISSION_DENIED, details
    _, ghost_code, ghost_details = lineage(server, "ghost")
    assert (ghost_code, ghost_details) == (code, details.replace("secret", "ghost"))


def test_a_hidden_service_does_not_make_a_visible_name_ambiguous(server: grpc_testing.Server) -> None:
    response, code, details = lineage(server, "public")
    assert code is grpc.StatusCode.OK, details
    assert (response.root.kind, response.root.name) == ("feature_view", "public")
    # Asked by kind, the service is denied as any service bob may not describe is.
    _, code, details = lineage(server, "public", "feature_service")
    _, ghost_code, ghost_details = lineage(server, "ghost", "feature_service")
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert (ghost_code, ghost_details) == (code, details.replace("public", "ghost"))


def test_a_describable_name_held_only_by_a_hidden_service_is_not_found(
    tmp_path: Path, make_registry: Any,
) -> None:
    """Bob may describe any feature view called `x`; only a service (hidden) has that name."""
    config = QuiverConfig(project="shop", repo_path=tmp_path)
    make_registry(config, [USER], [PUBLIC, SECRET], [FeatureService(name="x", features=[SECRET])])
    anyone_x = Permission(name="x", groups=["readers"], actions=[Action.DESCRIBE],
                          resources=[Resource.feature_view("x")])

    def permit(proto: registry_pb2.Registry) -> str:
        proto.permissions.append(convert.permission_to_proto(anyone_x, "shop"))
        return "apply"

    RegistryStore(config.registry_path).commit(permit)
    server = grpc_testing.server_from_dictionary({
        REGISTRY: AsBob(RegistryProvider(RegistryStore(config.registry_path)),
                        access=AccessControl(enabled=True), governance=GovernancePaths.of(config)),
    }, grpc_testing.strict_real_time())
    _, code, details = lineage(server, "x")
    assert code is grpc.StatusCode.NOT_FOUND, details
    assert "service" not in details
