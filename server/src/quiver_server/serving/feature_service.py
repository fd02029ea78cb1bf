"""`quiver.serving.v1.FeatureServingService`: the online read path."""

from __future__ import annotations

import grpc

from quiver.errors import UnimplementedError
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc
from quiver_server.online.base import OnlineStore
from quiver_server.registry.provider import RegistryProvider
from quiver_server.serving.convert import decode_key_columns, fill_column
from quiver_server.serving.online_read import PlanCache, read_online
from quiver_server.serving.status import rpc_errors


class FeatureServingServicer(pb_grpc.FeatureServingServiceServicer):
    def __init__(self, registry: RegistryProvider, store: OnlineStore, max_entities: int) -> None:
        self._registry = registry
        self._store = store
        self._max_entities = max_entities
        self._plans = PlanCache()

    @rpc_errors
    def GetOnlineFeatures(
        self, request: pb.GetOnlineFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.GetOnlineFeaturesResponse:
        plan = self._plans.get(
            self._registry.current(),
            request.features.refs,
            request.feature_service,
            request.full_feature_names,
        )
        key_columns, count = decode_key_columns(
            request.entities, plan.key_types, max_entities=self._max_entities
        )
        columns = read_online(self._store, plan, key_columns, count)
        response = pb.GetOnlineFeaturesResponse(feature_names=plan.output_names, entity_count=count)
        for column in columns:
            out = response.columns.add()
            fill_column(out.values, column.dtype, column.values)
            out.statuses.extend(column.statuses)
            out.event_timestamps.extend(column.event_ts)
        return response

    @rpc_errors
    def PushFeatures(
        self, request: pb.PushFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.PushFeaturesResponse:
        raise UnimplementedError("PushFeatures is not available in this release")

    @rpc_errors
    def DeleteEntities(
        self, request: pb.DeleteEntitiesRequest, context: grpc.ServicerContext
    ) -> pb.DeleteEntitiesResponse:
        raise UnimplementedError("DeleteEntities is not available in this release")
