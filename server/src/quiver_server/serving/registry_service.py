"""`quiver.registry.v1.RegistryService`: read-only access to the served registry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import grpc

from quiver.errors import InvalidArgumentError, NotFoundError
from quiver.registry.v1 import registry_service_pb2 as pb
from quiver.registry.v1 import registry_service_pb2_grpc as pb_grpc
from quiver.registry.v1.registry_pb2 import Registry
from quiver_server.echo import clip
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.registry_service import GovernanceMethods
from quiver_server.registry.provider import RegistryProvider
from quiver_server.serving.status import rpc_errors

T = TypeVar("T")


class RegistryServicer(GovernanceMethods, pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: RegistryProvider, governance: GovernancePaths | None = None) -> None:
        self._registry = registry
        self._governance = governance

    def _proto(self, project: str) -> Registry:
        snapshot = self._registry.current()
        if project and project != snapshot.project:
            raise NotFoundError(
                f"project {clip(project)!r} is not served here; "
                f"this server serves {snapshot.project!r}",
                reason="PROJECT_NOT_FOUND",
                metadata={"project": clip(project)},
            )
        return snapshot.proto

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
        proto = self._proto("")
        return pb.ListProjectsResponse(projects=[proto.project], registry_version=proto.version)

    @rpc_errors
    def ListEntities(
        self, request: pb.ListEntitiesRequest, context: grpc.ServicerContext
    ) -> pb.ListEntitiesResponse:
        proto = self._proto(request.project)
        return pb.ListEntitiesResponse(entities=sorted(proto.entities, key=lambda e: e.name))

    @rpc_errors
    def GetEntity(
        self, request: pb.GetEntityRequest, context: grpc.ServicerContext
    ) -> pb.GetEntityResponse:
        entities = self._proto(request.project).entities
        return pb.GetEntityResponse(entity=self._find(entities, request.name, "entity"))

    @rpc_errors
    def ListFeatureViews(
        self, request: pb.ListFeatureViewsRequest, context: grpc.ServicerContext
    ) -> pb.ListFeatureViewsResponse:
        proto = self._proto(request.project)
        return pb.ListFeatureViewsResponse(
            feature_views=sorted(proto.feature_views, key=lambda v: v.name)
        )

    @rpc_errors
    def GetFeatureView(
        self, request: pb.GetFeatureViewRequest, context: grpc.ServicerContext
    ) -> pb.GetFeatureViewResponse:
        proto = self._proto(request.project)
        view = self._find(proto.feature_views, request.name, "feature_view")
        return pb.GetFeatureViewResponse(feature_view=view, meta=proto.view_meta[view.name])

    @rpc_errors
    def ListFeatureServices(
        self, request: pb.ListFeatureServicesRequest, context: grpc.ServicerContext
    ) -> pb.ListFeatureServicesResponse:
        proto = self._proto(request.project)
        return pb.ListFeatureServicesResponse(
            feature_services=sorted(proto.feature_services, key=lambda s: s.name)
        )

    @rpc_errors
    def GetFeatureService(
        self, request: pb.GetFeatureServiceRequest, context: grpc.ServicerContext
    ) -> pb.GetFeatureServiceResponse:
        services = self._proto(request.project).feature_services
        return pb.GetFeatureServiceResponse(
            feature_service=self._find(services, request.name, "feature_service")
        )
