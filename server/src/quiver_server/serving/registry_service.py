"""`quiver.registry.v1.RegistryService`: read-only access to the served registry."""

from __future__ import annotations

import grpc

from quiver.errors import InvalidArgumentError, NotFoundError
from quiver.registry.v1 import registry_service_pb2 as pb
from quiver.registry.v1 import registry_service_pb2_grpc as pb_grpc
from quiver.registry.v1.registry_pb2 import Registry
from quiver_server.registry.provider import RegistryProvider
from quiver_server.serving.status import rpc_errors


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: RegistryProvider) -> None:
        self._registry = registry

    def _proto(self, project: str) -> Registry:
        snapshot = self._registry.current()
        if project and project != snapshot.project:
            raise NotFoundError(
                f"project {project!r} is not served here; this server serves {snapshot.project!r}",
                reason="PROJECT_NOT_FOUND",
                metadata={"project": project},
            )
        return snapshot.proto

    @staticmethod
    def _require_name(name: str) -> None:
        if not name:
            raise InvalidArgumentError.for_field("name", "must not be empty")

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
        self._require_name(request.name)
        for entity in self._proto(request.project).entities:
            if entity.name == request.name:
                return pb.GetEntityResponse(entity=entity)
        raise NotFoundError(
            f"entity {request.name!r} does not exist",
            reason="ENTITY_NOT_FOUND",
            metadata={"entity": request.name},
        )

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
        self._require_name(request.name)
        proto = self._proto(request.project)
        for view in proto.feature_views:
            if view.name == request.name:
                return pb.GetFeatureViewResponse(
                    feature_view=view, meta=proto.view_meta[request.name]
                )
        raise NotFoundError(
            f"feature view {request.name!r} does not exist",
            reason="FEATURE_VIEW_NOT_FOUND",
            metadata={"feature_view": request.name},
        )

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
        self._require_name(request.name)
        for service in self._proto(request.project).feature_services:
            if service.name == request.name:
                return pb.GetFeatureServiceResponse(feature_service=service)
        raise NotFoundError(
            f"feature service {request.name!r} does not exist",
            reason="FEATURE_SERVICE_NOT_FOUND",
            metadata={"feature_service": request.name},
        )
