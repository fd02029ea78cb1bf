"""The governance RPCs of `quiver.registry.v1.RegistryService`: training
datasets, lineage and the catalog. `RegistryServicer` mixes these in.

With access control on, callers see only what they may DESCRIBE: catalog
entries and lineage nodes of other objects are left out, a training dataset
is visible only to callers who may describe every view it reads (others are
told it does not exist), and asking about an object one may not describe is
denied without naming anything else.
"""

from __future__ import annotations

import grpc

from quiver.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from quiver.registry.v1 import governance_pb2 as gpb
from quiver.registry.v1 import registry_service_pb2 as pb
from quiver_server.auth.access import AccessControl
from quiver_server.governance.catalog import Catalog
from quiver_server.governance.datasets import DatasetStore, label
from quiver_server.governance.lineage import Lineage, ambiguous
from quiver_server.governance.paths import GovernancePaths
from quiver_server.registry.provider import RegistryProvider
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore
from quiver_server.serving.status import rpc_errors

# The kind access control knows for each catalog kind (a feature is its view's).
_DESCRIBED_AS = {"entity": "entity", "feature_view": "feature_view", "feature": "feature_view",
                 "feature_service": "feature_service"}


class GovernanceMethods:
    """Training datasets, lineage and catalog search over the served registry."""

    _registry: RegistryProvider
    _access: AccessControl
    _governance: GovernancePaths | None
    _catalog: Catalog | None = None

    def _snapshot(self, project: str) -> Snapshot:  # pragma: no cover - RegistryServicer's
        raise NotImplementedError

    def _paths(self, project: str) -> tuple[GovernancePaths, Snapshot]:
        snapshot = self._snapshot(project)  # NOT_FOUND for another project
        if self._governance is None:
            raise FailedPreconditionError(
                "this server was started without governance records", reason="GOVERNANCE_UNAVAILABLE"
            )
        return self._governance, snapshot

    def _may(self, snapshot: Snapshot, kind: str, name: str) -> bool:
        if kind == "training_dataset":
            return True  # checked on its views where the record is at hand
        described = _DESCRIBED_AS.get(kind, "project")
        return self._access.may_describe(snapshot, described, name.split(":", 1)[0])

    def _may_dataset(self, snapshot: Snapshot, record: gpb.TrainingDataset) -> bool:
        return all(self._access.may_describe(snapshot, "feature_view", h.feature_view)
                   for h in record.histories)

    def _visible_dataset(self, snapshot: Snapshot, record: gpb.TrainingDataset) -> gpb.TrainingDataset:
        if not self._may_dataset(snapshot, record):
            raise NotFoundError(f"training dataset {record.name!r} does not exist",
                                reason="DATASET_NOT_FOUND")
        return record

    @rpc_errors
    def ListTrainingDatasets(
        self, request: pb.ListTrainingDatasetsRequest, context: grpc.ServicerContext
    ) -> pb.ListTrainingDatasetsResponse:
        paths, snapshot = self._paths(request.project)
        store = DatasetStore(paths)
        records = [r for r in store.all(request.name) if self._may_dataset(snapshot, r)]
        if request.name and not records:
            store.read(request.name)  # NOT_FOUND naming it
            raise NotFoundError(f"training dataset {request.name!r} does not exist",
                                reason="DATASET_NOT_FOUND")
        versions = set(RegistryStore(paths.registry).versions())
        response = pb.ListTrainingDatasetsResponse()
        for record in records:
            response.datasets.add(dataset=record, status=store.status(record, versions))
        return response

    @rpc_errors
    def GetTrainingDataset(
        self, request: pb.GetTrainingDatasetRequest, context: grpc.ServicerContext
    ) -> pb.GetTrainingDatasetResponse:
        paths, snapshot = self._paths(request.project)
        if not request.name:
            raise InvalidArgumentError.for_field("name", "must not be empty")
        store = DatasetStore(paths)
        record = self._visible_dataset(snapshot, store.read(request.name, request.version))
        status = store.status(record, set(RegistryStore(paths.registry).versions()))
        response = pb.GetTrainingDatasetResponse()
        response.dataset.dataset.CopyFrom(record)
        response.dataset.status.CopyFrom(status)
        return response

    @rpc_errors
    def GetLineage(
        self, request: pb.GetLineageRequest, context: grpc.ServicerContext
    ) -> pb.GetLineageResponse:
        paths, snapshot = self._paths(request.project)
        if request.kind in ("feature_view", "feature_service") and request.name:
            # As the Get* methods do: whether or not it exists.
            self._access.check_describe(snapshot, request.kind, request.name)
        lineage = Lineage(paths, snapshot, set(RegistryStore(paths.registry).versions()))
        hidden = {label(r) for r in lineage.records if not self._may_dataset(snapshot, r)}
        root = lineage.of(request.name, self._lineage_kind(snapshot, lineage, request, hidden))
        if root.kind in ("feature_view", "feature_service"):
            self._access.check_describe(snapshot, root.kind, root.name)
        elif root.name in hidden:
            raise NotFoundError(f"training dataset {request.name!r} does not exist",
                                reason="OBJECT_NOT_FOUND")
        self._prune(snapshot, root, hidden)
        return pb.GetLineageResponse(root=root)

    def _lineage_kind(
        self, snapshot: Snapshot, lineage: Lineage, request: pb.GetLineageRequest, hidden: set[str],
    ) -> str:
        """The kind a lineage request without one means, judged on what the caller may
        describe: a hidden object neither makes a name ambiguous nor answers
        differently from a missing one."""
        name = request.name
        if request.kind or not name or not self._access.enabled:
            return request.kind
        kinds = [k for k in ("feature_view", "feature_service") if self._access.may_describe(snapshot, k, name)]
        found = [k for k in kinds if lineage.exists(k, name)]
        base = name.split(":", 1)[0]
        if any(r.name == base and label(r) not in hidden for r in lineage.records):
            found.append("training_dataset")
        if len(found) > 1:
            raise ambiguous(name, found)
        if found:
            return found[0]
        if not kinds:
            # The denial any name gets from a caller who may describe neither kind of it.
            self._access.check_describe(snapshot, "feature_view", name)
        return kinds[0]  # NOT_FOUND, as for a name nothing has

    def _prune(self, snapshot: Snapshot, node: gpb.LineageNode, hidden: set[str]) -> None:
        """Drop the children the caller may not describe (and everything under them)."""
        kept = []
        for child in node.children:
            if child.kind == "training_dataset":
                visible = child.name not in hidden
            elif child.kind in ("feature_view", "feature_service", "entity"):
                visible = self._may(snapshot, child.kind, child.name)
            else:
                visible = True
            if visible:
                self._prune(snapshot, child, hidden)
                kept.append(child)
        del node.children[:]
        node.children.extend(kept)

    @rpc_errors
    def SearchCatalog(
        self, request: pb.SearchCatalogRequest, context: grpc.ServicerContext
    ) -> pb.SearchCatalogResponse:
        catalog, snapshot = self._catalog_for(request.project)
        visible = self._visible_entries(snapshot, catalog)
        entries = catalog.search(request.text, list(request.kinds), request.limit, only=visible)
        return pb.SearchCatalogResponse(entries=entries)

    @rpc_errors
    def GetCatalogEntry(
        self, request: pb.GetCatalogEntryRequest, context: grpc.ServicerContext
    ) -> pb.GetCatalogEntryResponse:
        catalog, snapshot = self._catalog_for(request.project)
        if request.kind in _DESCRIBED_AS and request.name:
            self._access.check_describe(
                snapshot, _DESCRIBED_AS[request.kind], request.name.split(":", 1)[0]
            )
        visible = self._visible_entries(snapshot, catalog)
        entry = catalog.entry(request.kind, request.name, only=visible)
        return pb.GetCatalogEntryResponse(entry=entry)

    def _visible_entries(self, snapshot: Snapshot, catalog: Catalog) -> set[str] | None:
        """"kind:name" of every object the caller may describe; None when all are."""
        if not self._access.enabled:
            return None
        visible = {f"{e.kind}:{e.name}" for e in catalog.entries()
                   if e.kind != "training_dataset" and self._may(snapshot, e.kind, e.name)}
        visible.update(f"training_dataset:{label(r)}" for r in DatasetStore(catalog.paths).all()
                       if self._may_dataset(snapshot, r))
        return visible

    def _catalog_for(self, project: str) -> tuple[Catalog, Snapshot]:
        paths, snapshot = self._paths(project)
        if self._catalog is None:
            # One per servicer: it caches the definitions of every registry version read.
            self._catalog = Catalog(paths, RegistryStore(paths.registry))
        return self._catalog, snapshot
