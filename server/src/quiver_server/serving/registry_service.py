"""`quiver.registry.v1.RegistryService`: read-only access to the served registry.

With auth on, listings hold only what the caller may DESCRIBE, and a Get of
anything else is PERMISSION_DENIED whether it exists or not; a caller who may
describe nothing gets that answer for any project name, the served one's included.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import grpc

from quiver.errors import InvalidArgumentError, NotFoundError
from quiver.registry.v1 import registry_service_pb2 as pb
from quiver.registry.v1 import registry_service_pb2_grpc as pb_grpc
from quiver_server.auth.access import AccessControl
from quiver_server.echo import clip
from quiver_server.registry.provider import RegistryProvider
from quiver_server.registry.snapshot import Snapshot
from quiver_server.serving.status import rpc_errors

T = TypeVar("T")


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: RegistryProvider, *, access: AccessControl | None = None) -> None:
        self._registry = registry
        self._access = access or AccessControl.disabled()

    def _snapshot(self, project: str) -> Snapshot:
        snapshot = self._registry.current()
        if project and project != snapshot.project:
            if not self._access.may_describe(snapshot, "project", snapshot.project):
                # A caller who may describe nothing gets, for any project name, the
                # answer the served one gets (empty listings, denied Gets): a NOT_FOUND
                # for the other names would let it guess the served project's name.
                return snapshot
            raise NotFoundError(
                f"project {clip(project)!r} is not served here; "
                f"this server serves {snapshot.project!r}",
                reason="PROJECT_NOT_FOUND",
                metadata={"project": clip(project)},
            )
        return snapshot

    def _visible(self, snapshot: Snapshot, kind: str, items: Iterable[T]) -> list[T]:
        """`items` the caller may describe, sorted by name."""
        return sorted(
            (i for i in items if self._access.may_describe(snapshot, kind, i.name)),  # type: ignore[attr-defined]
            key=lambda i: i.name,  # type: ignore[attr-defined]
        )

    def _get(self, snapshot: Snapshot, items: Iterable[T], name: str, kind: str) -> T:
        if name:
            self._access.check_describe(snapshot, kind, name)
        return self._find(items, name, kind)

    @staticmethod
    def _find(items: Iterable[T], name: str, kind: str) -> T:
        """The item called `name`; INVALID_ARGUMENT if empty, NOT_FOUND if absent."""
        if not name:
            raise InvalidArgumentError.for_field("name", "must not be empty")
        for item in items:
            if item.name == name:  # type: ignore[attr-defined]
                return item
        raise NotFoundError(
            f"{kind.replace('_', ' ')} {clip(name)!r} does not exist",
            reason=f"{kind.upper()}_NOT_FOUND",
            metadata={kind: clip(name)},
        )

    @rpc_errors
    def ListProjects(
        self, request: pb.ListProjectsRequest, context: grpc.ServicerContext
    ) -> pb.ListProjectsResponse:
        snapshot = self._snapshot("")
        proto = snapshot.proto
        visible = self._access.may_describe(snapshot, "project", snapshot.project)
        return pb.ListProjectsResponse(
            projects=[proto.project] if visible else [], registry_version=proto.version
        )

    @rpc_errors
    def ListEntities(
        self, request: pb.ListEntitiesRequest, context: grpc.ServicerContext
    ) -> pb.ListEntitiesResponse:
        snapshot = self._snapshot(request.project)
        return pb.ListEntitiesResponse(
            entities=self._visible(snapshot, "entity", snapshot.proto.entities)
        )

    @rpc_errors
    def GetEntity(
        self, request: pb.GetEntityRequest, context: grpc.ServicerContext
    ) -> pb.GetEntityResponse:
        snapshot = self._snapshot(request.project)
        return pb.GetEntityResponse(
            entity=self._get(snapshot, snapshot.proto.entities, request.name, "entity")
        )

    @rpc_errors
    def ListFeatureViews(
        self, request: pb.ListFeatureViewsRequest, context: grpc.ServicerContext
    ) -> pb.ListFeatureViewsResponse:
        snapshot = self._snapshot(request.project)
        return pb.ListFeatureViewsResponse(
            feature_views=self._visible(snapshot, "feature_view", snapshot.proto.feature_views)
        )

    @rpc_errors
    def GetFeatureView(
        self, request: pb.GetFeatureViewRequest, context: grpc.ServicerContext
    ) -> pb.GetFeatureViewResponse:
        snapshot = self._snapshot(request.project)
        proto = snapshot.proto
        view = self._get(snapshot, proto.feature_views, request.name, "feature_view")
        return pb.GetFeatureViewResponse(feature_view=view, meta=proto.view_meta[view.name])

    @rpc_errors
    def ListFeatureServices(
        self, request: pb.ListFeatureServicesRequest, context: grpc.ServicerContext
    ) -> pb.ListFeatureServicesResponse:
        snapshot = self._snapshot(request.project)
        return pb.ListFeatureServicesResponse(
            feature_services=self._visible(
                snapshot, "feature_service", snapshot.proto.feature_services
            )
        )

    @rpc_errors
    def GetFeatureService(
        self, request: pb.GetFeatureServiceRequest, context: grpc.ServicerContext
    ) -> pb.GetFeatureServiceResponse:
        snapshot = self._snapshot(request.project)
        return pb.GetFeatureServiceResponse(
            feature_service=self._get(
                snapshot, snapshot.proto.feature_services, request.name, "feature_service"
            )
        )
