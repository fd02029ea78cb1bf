"""`quiver.registry.v1.RegistryService`: read-only access to the served registry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import grpc

from quiver.errors import InvalidArgumentError, NotFoundError
from quiver.registry.v1 import registry_service_pb2 as pb
from quiver.registry.v1 import registry_service_pb2_grpc as pb_grpc
from quiver.registry.v1.registry_pb2 import FeatureService, Registry
from quiver_server.echo import clip
from quiver_server.registry.provider import RegistryProvider
from quiver_server.serving.status import rpc_errors
from quiver_server.transforms import params

T = TypeVar("T")


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: RegistryProvider) -> None:
        self._registry = registry

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
        proto = self._proto(request.project)
        service = self._find(proto.feature_services, request.name, "feature_service")
        return pb.GetFeatureServiceResponse(
            feature_service=service,
            current_transform_version=params.current_version(proto, service),
        )

    @rpc_errors
    def ListOnDemandFeatureViews(
        self, request: pb.ListOnDemandFeatureViewsRequest, context: grpc.ServicerContext
    ) -> pb.ListOnDemandFeatureViewsResponse:
        proto = self._proto(request.project)
        return pb.ListOnDemandFeatureViewsResponse(
            on_demand_feature_views=sorted(proto.on_demand_feature_views, key=lambda v: v.name)
        )

    @rpc_errors
    def GetOnDemandFeatureView(
        self, request: pb.GetOnDemandFeatureViewRequest, context: grpc.ServicerContext
    ) -> pb.GetOnDemandFeatureViewResponse:
        views = self._proto(request.project).on_demand_feature_views
        return pb.GetOnDemandFeatureViewResponse(
            on_demand_feature_view=self._find(views, request.name, "on_demand_feature_view")
        )

    @rpc_errors
    def ListTransformParameterSets(
        self, request: pb.ListTransformParameterSetsRequest, context: grpc.ServicerContext
    ) -> pb.ListTransformParameterSetsResponse:
        proto = self._proto(request.project)
        service = self._named_service(proto, request.feature_service)
        return pb.ListTransformParameterSetsResponse(
            parameter_sets=params.parameter_sets(proto, service.name),
            current_version=params.current_version(proto, service),
        )

    @rpc_errors
    def GetTransformParameterSet(
        self, request: pb.GetTransformParameterSetRequest, context: grpc.ServicerContext
    ) -> pb.GetTransformParameterSetResponse:
        proto = self._proto(request.project)
        service = self._named_service(proto, request.feature_service)
        found = params.parameter_set(proto, service.name, request.version)
        if found is None:
            raise NotFoundError(
                f"feature service {service.name!r} has no transforms with fitted parameters",
                reason="TRANSFORM_VERSION_NOT_FOUND",
                metadata={"feature_service": service.name},
            )
        current = params.current_version(proto, service)
        return pb.GetTransformParameterSetResponse(
            parameter_set=found, current=found.version == current
        )

    def _named_service(self, proto: Registry, name: str) -> FeatureService:
        if not name:
            raise InvalidArgumentError.for_field("feature_service", "must not be empty")
        return self._find(proto.feature_services, name, "feature_service")
