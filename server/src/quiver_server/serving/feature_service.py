"""`quiver.serving.v1.FeatureServingService`: the online read path, pushes and deletes.

Each method checks the registry's permissions (`AccessControl`, a no-op with
auth off) once it has resolved what the request touches.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from quiver import Action, FeatureView, PushTarget
from quiver.convert import from_values
from quiver.errors import InvalidArgumentError, NotFoundError
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc
from quiver_server.auth.access import AccessControl
from quiver_server.config import ServingConfig
from quiver_server.deletion import check_delete_count, delete_entities
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.serving import erase_entities
from quiver_server.monitoring.sinks import ServerProfiles
from quiver_server.online.base import OnlineStore
from quiver_server.push import push
from quiver_server.registry.provider import RegistryProvider
from quiver_server.serving.admission import HeavyRequestLimit
from quiver_server.serving.convert import (
    decode_key_columns,
    decode_push_rows,
    fill_column,
    push_target,
)
from quiver_server.serving.online_read import OutputColumn, PlanCache, read_online
from quiver_server.serving.online_transform import apply_pipeline, request_rows
from quiver_server.serving.status import rpc_errors
from quiver_server.telemetry.spans import traced
from quiver_server.transforms.engine import Transformations
from quiver_server.transforms.selection import select

PUSH_ACTIONS: dict[PushTarget, tuple[Action, ...]] = {
    PushTarget.ONLINE: (Action.WRITE_ONLINE,),
    PushTarget.OFFLINE: (Action.WRITE_OFFLINE,),
    PushTarget.ONLINE_AND_OFFLINE: (Action.WRITE_ONLINE, Action.WRITE_OFFLINE),
}


@traced("quiver.response.encode")
def encode_response(
    names: list[str], columns: list[OutputColumn], count: int
) -> pb.GetOnlineFeaturesResponse:
    response = pb.GetOnlineFeaturesResponse(feature_names=names, entity_count=count)
    for column in columns:
        out = response.columns.add()
        fill_column(out.values, column.dtype, column.values)
        out.statuses.extend(column.statuses)  # type: ignore[arg-type]
        out.event_timestamps.extend(column.event_ts)
    return response


class FeatureServingServicer(pb_grpc.FeatureServingServiceServicer):
    """The serving service's gRPC edge.

    Args:
        registry: The registry versions served.
        store: The online store.
        serving: The `serving` settings (entity, delete and heavy-request limits, clock skew).
        offline_root: Where pushed rows are appended to history.
        served: Called with the graded columns of every answered lookup, before
            they are encoded (the feature-status metrics count them there).
        profiles: Feature monitoring: pushed rows and a sample of the served
            values are profiled into it.
    """

    def __init__(
        self,
        registry: RegistryProvider,
        store: OnlineStore,
        serving: ServingConfig,
        offline_root: str,
        served: Callable[[list[OutputColumn]], None] | None = None,
        profiles: ServerProfiles | None = None,
        governance: GovernancePaths | None = None,
        *,
        access: AccessControl | None = None,
        transformations: Transformations | None = None,
    ) -> None:
        self._registry = registry
        self._profiles = profiles
        self._governance = governance
        self._access = access or AccessControl.disabled()
        self._offline_root = offline_root
        self._store = store
        self._serving = serving
        # On-demand functions are looked up in the feature repo (the working
        # directory when none is given).
        self._plans = PlanCache(transformations or Transformations("."))
        self._served = served
        self.heavy = HeavyRequestLimit(serving.heavy_request_entities, serving.max_heavy_requests)

    @rpc_errors
    def GetOnlineFeatures(
        self, request: pb.GetOnlineFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.GetOnlineFeaturesResponse:
        snapshot = self._registry.current()
        refs, service = request.features.refs, request.feature_service
        try:
            plan = self._plans.get(
                snapshot, refs, service, request.full_feature_names, request.transform_version
            )
        except NotFoundError as exc:
            raise self._access.unknown(
                exc, snapshot, Action.READ_ONLINE, requested=refs, service=service
            ) from None
        except InvalidArgumentError:
            # Features that resolve but cannot be served together (one output name from
            # two views, a join key of two types) are named only to a caller who may
            # read them all: before that, a name it may not see is denied whether or not
            # it exists.
            if self._access.enabled:
                stored = select(snapshot, list(refs), service or None).stored
                self._access.check_features(
                    snapshot, Action.READ_ONLINE, stored, service=service, requested=refs
                )
            raise
        # Every stored feature the lookup reads, an on-demand view's inputs included.
        self._access.check_features(
            snapshot, Action.READ_ONLINE, plan.refs, service=service, requested=refs
        )
        max_entities = self._serving.max_entities
        if plan.refs or plan.pipeline is None:
            key_columns, count = decode_key_columns(
                request.entities, plan.key_types, max_entities=max_entities
            )
        else:  # only on-demand features of request data: nothing to read
            key_columns = {}
            count = request_rows(request.entities, request.request_data, max_entities)
        with self.heavy.admit(count, "entities"):
            columns = read_online(self._store, plan, key_columns, count) if plan.refs else []
            if self._profiles is not None:
                self._profiles.sampler.observe(plan.parts, columns)
            if plan.pipeline is not None or request.request_data:
                columns = apply_pipeline(plan, columns, request.request_data, count)
            if self._served is not None:
                self._served(columns)
            response = encode_response(plan.output_names, columns, count)
            if plan.pipeline is not None:
                response.transform_version = plan.pipeline.version
            return response

    @rpc_errors
    def PushFeatures(
        self, request: pb.PushFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.PushFeaturesResponse:
        if not request.feature_view:
            raise InvalidArgumentError.for_field("feature_view", "name the feature view to push to")
        target = push_target(request.to)
        snapshot = self._registry.current()
        actions = PUSH_ACTIONS[target]
        try:
            table = snapshot.view_table(request.feature_view)
        except NotFoundError as exc:
            raise self._access.unknown(exc, snapshot, actions[0]) from None
        self._access.check_views(snapshot, actions, [table.view])
        rows = decode_push_rows(request)
        with self.heavy.admit(rows.num_rows, "rows"):
            result = push(
                self._store, table, self._offline_root, rows, target,
                max_future_seconds=self._serving.max_future_seconds,
                profiles=self._profiles.accumulator if self._profiles is not None else None,
            )
        return pb.PushFeaturesResponse(rows=result.rows, rows_superseded=result.superseded)

    @rpc_errors
    def DeleteEntities(
        self, request: pb.DeleteEntitiesRequest, context: grpc.ServicerContext
    ) -> pb.DeleteEntitiesResponse:
        columns = {name: from_values(values)[1] for name, values in request.entities.items()}
        count = max((len(values) for values in columns.values()), default=0)
        check_delete_count(count, self._serving.max_delete_entities)
        entities = {name: list(values) for name, values in columns.items()}
        snapshot = self._registry.current()
        named = bool(request.feature_views)
        # Offline erasure rewrites history too: it needs WRITE_OFFLINE as well as DELETE.
        actions = (Action.DELETE, Action.WRITE_OFFLINE) if request.offline else (Action.DELETE,)

        def authorize(views: list[FeatureView]) -> None:
            self._access.check_views(
                snapshot, actions, views, named=named,
                what=f"every feature view keyed by {sorted(entities)}",
            )

        with self.heavy.admit(count, "keys"):
            try:
                if request.offline:
                    return erase_entities(
                        self._governance, snapshot, self._store, entities,
                        list(request.feature_views), authorize=authorize,
                    )
                result = delete_entities(
                    self._store, snapshot, entities, list(request.feature_views),
                    authorize=authorize,
                )
            except NotFoundError as exc:
                raise self._access.unknown(exc, snapshot, Action.DELETE) from None
        return pb.DeleteEntitiesResponse(
            rows_deleted=result.rows_deleted, feature_views=result.feature_views
        )
