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
from quiver.registry.v1.registry_pb2 import FeatureService, OnDemandFeatureView
from quiver_server.auth.access import AccessControl
from quiver_server.echo import clip
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.registry_service import GovernanceMethods
from quiver_server.registry.provider import RegistryProvider
from quiver_server.registry.snapshot import Snapshot
from quiver_server.serving.status import rpc_errors
from quiver_server.transforms import params

T = TypeVar("T")


class RegistryServicer(GovernanceMethods, pb_grpc.RegistryServiceServicer):
    def __init__(
        self, registry: RegistryProvider, *, access: AccessControl | None = None,
        governance: GovernancePaths | None = None,
    ) -> None:
        self._registry = registry
        self._access = access or AccessControl.disabled()
        self._governance = governance

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
        service = self._get(
            snapshot, snapshot.proto.feature_services, request.name, "feature_service"
        )
        return pb.GetFeatureServiceResponse(
            feature_service=service,
            current_transform_version=params.current_version(snapshot.proto, service),
        )

    def _may_describe_on_demand(self, snapshot: Snapshot, view: OnDemandFeatureView) -> bool:
        """An on-demand view is described to whoever may describe every view it reads."""
        return self._access.may_describe(snapshot, "on_demand_feature_view", view.name)

    @rpc_errors
    def ListOnDemandFeatureViews(
        self, request: pb.ListOnDemandFeatureViewsRequest, context: grpc.ServicerContext
    ) -> pb.ListOnDemandFeatureViewsResponse:
        snapshot = self._snapshot(request.project)
        views = snapshot.proto.on_demand_feature_views
        return pb.ListOnDemandFeatureViewsResponse(on_demand_feature_views=sorted(
            (v for v in views if self._may_describe_on_demand(snapshot, v)), key=lambda v: v.name
        ))

    @rpc_errors
    def GetOnDemandFeatureView(
        self, request: pb.GetOnDemandFeatureViewRequest, context: grpc.ServicerContext
    ) -> pb.GetOnDemandFeatureViewResponse:
        snapshot = self._snapshot(request.project)
        # Checked before the name is looked up: a name the caller may not describe is
        # denied whether or not it exists.
        view = self._get(
            snapshot, snapshot.proto.on_demand_feature_views, request.name, "on_demand_feature_view"
        )
        return pb.GetOnDemandFeatureViewResponse(on_demand_feature_view=view)

    @rpc_errors
    def ListTransformParameterSets(
        self, request: pb.ListTransformParameterSetsRequest, context: grpc.ServicerContext
    ) -> pb.ListTransformParameterSetsResponse:
        snapshot = self._snapshot(request.project)
        service = self._named_service(snapshot, request.feature_service)
        return pb.ListTransformParameterSetsResponse(
            parameter_sets=params.parameter_sets(snapshot.proto, service.name),
            current_version=params.current_version(snapshot.proto, service),
        )

    @rpc_errors
    def GetTransformParameterSet(
        self, request: pb.GetTransformParameterSetRequest, context: grpc.ServicerContext
    ) -> pb.GetTransformParameterSetResponse:
        snapshot = self._snapshot(request.project)
        service = self._named_service(snapshot, request.feature_service)
        found = params.parameter_set(snapshot.proto, service.name, request.version)
        if found is None:
            raise NotFoundError(
                f"feature service {service.name!r} has no transforms with fitted parameters",
                reason="TRANSFORM_VERSION_NOT_FOUND",
                metadata={"feature_service": service.name},
            )
        current = params.current_version(snapshot.proto, service)
        return pb.GetTransformParameterSetResponse(
            parameter_set=found, current=found.version == current
        )

    def _named_service(self, snapshot: Snapshot, name: str) -> FeatureService:
        if not name:
            raise InvalidArgumentError.for_field("feature_service", "must not be empty")
        return self._get(snapshot, snapshot.proto.feature_services, name, "feature_service")
