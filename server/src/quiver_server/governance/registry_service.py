"""The governance RPCs of `quiver.registry.v1.RegistryService`: training
datasets, lineage and the catalog. `RegistryServicer` mixes these in."""

from __future__ import annotations

import grpc

from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver.registry.v1 import registry_service_pb2 as pb
from quiver.registry.v1.registry_pb2 import Registry
from quiver_server.governance.catalog import Catalog
from quiver_server.governance.datasets import DatasetStore
from quiver_server.governance.lineage import Lineage
from quiver_server.governance.paths import GovernancePaths
from quiver_server.registry.provider import RegistryProvider
from quiver_server.registry.store import RegistryStore
from quiver_server.serving.status import rpc_errors


class GovernanceMethods:
    """Training datasets, lineage and catalog search over the served registry."""

    _registry: RegistryProvider
    _governance: GovernancePaths | None
    _catalog: Catalog | None = None

    def _proto(self, project: str) -> Registry:  # pragma: no cover - RegistryServicer's
        raise NotImplementedError

    def _paths(self, project: str) -> GovernancePaths:
        self._proto(project)  # NOT_FOUND for another project
        if self._governance is None:
            raise FailedPreconditionError(
                "this server was started without governance records", reason="GOVERNANCE_UNAVAILABLE"
            )
        return self._governance

    def _registry_store(self, paths: GovernancePaths) -> RegistryStore:
        return RegistryStore(paths.registry)

    @rpc_errors
    def ListTrainingDatasets(
        self, request: pb.ListTrainingDatasetsRequest, context: grpc.ServicerContext
    ) -> pb.ListTrainingDatasetsResponse:
        paths = self._paths(request.project)
        store = DatasetStore(paths)
        if request.name:
            store.read(request.name)  # NOT_FOUND naming it
        versions = set(self._registry_store(paths).versions())
        response = pb.ListTrainingDatasetsResponse()
        for record in store.all(request.name):
            response.datasets.add(dataset=record, status=store.status(record, versions))
        return response

    @rpc_errors
    def GetTrainingDataset(
        self, request: pb.GetTrainingDatasetRequest, context: grpc.ServicerContext
    ) -> pb.GetTrainingDatasetResponse:
        paths = self._paths(request.project)
        if not request.name:
            raise InvalidArgumentError.for_field("name", "must not be empty")
        store = DatasetStore(paths)
        record = store.read(request.name, request.version)
        status = store.status(record, set(self._registry_store(paths).versions()))
        response = pb.GetTrainingDatasetResponse()
        response.dataset.dataset.CopyFrom(record)
        response.dataset.status.CopyFrom(status)
        return response

    @rpc_errors
    def GetLineage(
        self, request: pb.GetLineageRequest, context: grpc.ServicerContext
    ) -> pb.GetLineageResponse:
        paths = self._paths(request.project)
        lineage = Lineage(paths, self._registry.current(), set(self._registry_store(paths).versions()))
        return pb.GetLineageResponse(root=lineage.of(request.name, request.kind))

    @rpc_errors
    def SearchCatalog(
        self, request: pb.SearchCatalogRequest, context: grpc.ServicerContext
    ) -> pb.SearchCatalogResponse:
        catalog = self._catalog_for(request.project)
        return pb.SearchCatalogResponse(
            entries=catalog.search(request.text, list(request.kinds), request.limit)
        )

    @rpc_errors
    def GetCatalogEntry(
        self, request: pb.GetCatalogEntryRequest, context: grpc.ServicerContext
    ) -> pb.GetCatalogEntryResponse:
        catalog = self._catalog_for(request.project)
        return pb.GetCatalogEntryResponse(entry=catalog.entry(request.kind, request.name))

    def _catalog_for(self, project: str) -> Catalog:
        paths = self._paths(project)
        if self._catalog is None:
            # One per servicer: it caches the definitions of every registry version read.
            self._catalog = Catalog(paths, self._registry_store(paths))
        return self._catalog
