"""Planning training sets into signed partitions, and opening a partition again.

Planning resolves the features in the newest registry version, checks the
spine against them, and cuts the spine into row ranges. Each range becomes a
`TrainingSetPartition` that pins everything its result depends on -- the
registry version, the spine and its expiry, a fingerprint of every view's
history files -- and is signed, so any replica can serve it any number of
times and either produce the same rows or refuse with FAILED_PRECONDITION.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
from google.protobuf import message

from quiver import Action, FeatureView
from quiver.convert import DEFAULT_TIMESTAMP_COLUMN, pack
from quiver.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    QuiverError,
    ResourceExhaustedError,
)
from quiver.flight.v1 import flight_pb2 as pb
from quiver.registry.v1 import governance_pb2 as gpb
from quiver_flight.convert import timestamp_seconds, unpack_ticket
from quiver_flight.fitting import FitRequest, fit_service
from quiver_flight.history import HistorySource
from quiver_flight.pit import PointInTimeEngine, feature_fields, group_by_view
from quiver_flight.spines import Spine, SpineStore
from quiver_flight.tickets import TicketSigner
from quiver_flight.transformed import TrainingShape
from quiver_server.auth.access import AccessControl
from quiver_server.config import FlightConfig
from quiver_server.governance.paths import GovernancePaths
from quiver_server.monitoring.training_sets import TrainingSetProfiler
from quiver_server.offline.source import filesystem_and_path, resolve_path
from quiver_server.registry.snapshot import FeatureRef, Snapshot
from quiver_server.registry.store import RegistryStore
from quiver_server.telemetry.spans import traced
from quiver_server.transforms.engine import Transformations
from quiver_server.transforms.pipeline import Pipeline
from quiver_server.transforms.selection import Selection, select

ROLE_METADATA = b"quiver.role"
_SNAPSHOTS_KEPT = 8


@dataclass(frozen=True)
class Plan:
    """A planned training set: its schema, rows and signed partitions, and what it read."""

    schema: pa.Schema
    rows: int
    tickets: list[bytes]
    planned: Planned


@dataclass(frozen=True)
class Planned:
    """What a plan resolved: a training dataset records it."""

    snapshot: Snapshot
    feature_refs: list[str]
    spine: Spine
    sources: dict[str, HistorySource]
    transform_version: int = 0


@dataclass(frozen=True)
class Pinned:
    """A stored training dataset's fixed inputs (see `plan`)."""

    dataset: gpb.TrainingDatasetRef
    snapshot: Snapshot
    spine: Spine
    sources: Callable[[list[FeatureView]], dict[str, HistorySource]]


@dataclass(frozen=True)
class PartitionJob:
    """What a ticket asks for, opened and checked."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    partition: pb.TrainingSetPartition


class TrainingSets:
    """The Flight-independent half of the server: plan, describe, compute.

    Every entry point checks READ_OFFLINE (DESCRIBE for `feature_sets`) on
    what it resolved, through `access` (a no-op when auth is off).
    """

    def __init__(
        self,
        registry: RegistryStore,
        engine: PointInTimeEngine,
        spines: SpineStore,
        signer: TicketSigner,
        config: FlightConfig,
        clock: Callable[[], float] = time.time,
        profiler: TrainingSetProfiler | None = None,
        access: AccessControl | None = None,
        governance: GovernancePaths | None = None,
        transformations: Transformations | None = None,
    ) -> None:
        self.registry = registry
        self.profiler = profiler
        self.access = access or AccessControl.disabled()
        self.engine = engine
        self.spines = spines
        self.signer = signer
        self.config = config
        self.clock = clock
        # On-demand functions are looked up in the feature repo (the working
        # directory when none is given).
        self.transformations = transformations or Transformations(".")
        self._snapshots: OrderedDict[int, Snapshot] = OrderedDict()
        self._lock = threading.Lock()
        # Imported here: the dataset planner builds on this class.
        from quiver_flight.datasets import TrainingDatasets

        self.datasets = TrainingDatasets(
            self, governance or GovernancePaths(registry.path, engine.offline_root)
        )

    def snapshot(self, version: int | None = None) -> Snapshot:
        """A registry version (the newest by default), decoded once and kept."""
        if version is None:
            # A version that does not verify is never served; the newest that does is.
            version = self.registry.latest_good_version()
            if version == 0:
                self.registry.latest()  # raises "run quiver apply" or why the newest is bad
        with self._lock:
            found = self._snapshots.get(version)
            if found is not None:
                self._snapshots.move_to_end(version)
                return found
        snapshot = Snapshot(self.registry.read(version))
        with self._lock:
            self._snapshots[version] = snapshot
            while len(self._snapshots) > _SNAPSHOTS_KEPT:
                self._snapshots.popitem(last=False)
        return snapshot

    def readiness(self) -> str | None:
        """None when training sets can be planned and computed now, else why not.

        Ready means the newest registry version loads and the offline store
        root can be listed (the health service reports it).
        """
        try:
            self.snapshot()
        except QuiverError as exc:
            return f"registry: {exc.message}"
        except Exception as exc:
            return f"registry: {type(exc).__name__}: {exc}"
        fs, root = filesystem_and_path(self.engine.offline_root)
        try:
            info = fs.get_file_info(root)
            if info.type != pafs.FileType.Directory:
                return "offline store: its root is not a directory"
            fs.get_file_info(pafs.FileSelector(root))
        except OSError as exc:
            return f"offline store: {exc}"
        return None

    def resolve(
        self, snapshot: Snapshot, requested: Sequence[str], service: str
    ) -> Selection:
        """The selection, once the caller may READ_OFFLINE every stored feature it
        reads (an on-demand view's inputs included)."""
        try:
            selection = select(snapshot, list(requested), service or None, field="features")
        except NotFoundError as exc:
            raise self.access.unknown(
                exc, snapshot, Action.READ_OFFLINE, requested=requested, service=service
            ) from None
        self.access.check_features(
            snapshot, Action.READ_OFFLINE, selection.stored, service=service, requested=requested
        )
        return selection

    def shape(
        self,
        snapshot: Snapshot,
        *,
        features: Sequence[str] = (),
        feature_service: str = "",
        full_feature_names: bool = False,
        transform_version: int = 0,
    ) -> TrainingShape:
        """Resolve a selection and build what turns its join into the training set."""
        selection = self.resolve(snapshot, features, feature_service)
        pipeline = None
        if not selection.plain or transform_version:
            pipeline = self.transformations.pipeline(
                snapshot, selection, version=transform_version, full_names=full_feature_names
            )
        return TrainingShape(selection, pipeline, full_feature_names)

    def command_shape(
        self, command: pb.TrainingSetCommand, snapshot: Snapshot, transform_version: int = 0
    ) -> TrainingShape:
        selection = command.WhichOneof("selection")
        return self.shape(
            snapshot,
            features=list(command.features.refs) if selection == "features" else [],
            feature_service=command.feature_service if selection == "feature_service" else "",
            full_feature_names=command.full_feature_names,
            transform_version=transform_version or command.transform_version,
        )

    @traced("quiver.flight.spine.open")
    def open_spine(self, source: pb.SpineSource, snapshot: Snapshot) -> Spine:
        """The spine a command names. A Parquet spine is whatever was put in the spine
        directory, by anyone, so reading one needs READ_OFFLINE on the whole project."""
        kind = source.WhichOneof("source")
        if kind == "spine_id":
            return self.spines.open(source.spine_id)
        if kind == "parquet_path":
            self.access.check_project(
                snapshot, Action.READ_OFFLINE, f"Parquet spine {source.parquet_path!r} "
                "(a parquet_path spine needs READ_OFFLINE on the whole project; upload the "
                "spine instead)", parquet_path=source.parquet_path,
            )
            history = [resolve_path(self.engine.offline_root, view.source.path)
                       for view in snapshot.feature_views.values()]
            return self.spines.open_path(source.parquet_path, history)
        if kind == "training_dataset":
            return self.datasets.open_spine(source.training_dataset)
        raise InvalidArgumentError.for_field(
            "spine", "name a spine: spine_id (from do_put) or parquet_path", reason="MISSING_SPINE"
        )

    def schema(self, command: pb.TrainingSetCommand) -> pa.Schema:
        """The result schema, or without a spine the columns a spine needs plus the features."""
        snapshot = self.snapshot()
        shape = self.command_shape(command, snapshot)
        timestamp_column = command.timestamp_column or DEFAULT_TIMESTAMP_COLUMN
        if not command.HasField("spine"):
            return required_schema(shape, timestamp_column)
        spine = self.open_spine(command.spine, snapshot)
        return shape.schema(spine.schema, timestamp_column)

    @traced("quiver.flight.plan")
    def plan(
        self, command: pb.TrainingSetCommand, *, pinned: Pinned | None = None,
    ) -> Plan:
        """Check a training-set command and cut it into signed partitions.

        `pinned` (a stored training dataset) fixes the registry version, the
        spine and each view's history files instead of taking the newest.

        Raises:
            InvalidArgumentError, NotFoundError, FailedPreconditionError,
            ResourceExhaustedError: naming what is wrong.
        """
        snapshot = pinned.snapshot if pinned else self.snapshot()
        timestamp_column = command.timestamp_column or DEFAULT_TIMESTAMP_COLUMN
        if command.fit and pinned is None:
            if command.WhichOneof("selection") != "feature_service":
                raise InvalidArgumentError.for_field(
                    "fit", "fitting needs a feature service (its transforms are what is fitted)",
                    reason="NOTHING_TO_FIT",
                )
            self.resolve(snapshot, (), command.feature_service)  # may it read what it fits on?
            spine = self.open_spine(command.spine, snapshot)
            snapshot, fitted = self._fit(command, snapshot, spine, timestamp_column)
            shape = self.command_shape(command, snapshot, fitted)
        else:
            shape = self.command_shape(command, snapshot)
            spine = pinned.spine if pinned else self.open_spine(command.spine, snapshot)
        schema = shape.schema(spine.schema, timestamp_column)
        refs = shape.join_refs
        rows = spine.num_rows
        if rows > self.spines.max_rows:
            raise _too_many_rows(rows, self.spines.max_rows)
        nulls = spine.null_count(timestamp_column)
        if nulls:
            raise InvalidArgumentError.for_field(
                f"spine.{timestamp_column}",
                f"{nulls} spine rows have no timestamp; every spine row needs one",
                reason="SPINE_NULL_TIMESTAMP",
            )
        views = [view for view, _ in group_by_view(refs)]
        sources = pinned.sources(views) if pinned else self.engine.locate(views)
        self.engine.check_sources(refs, sources)
        per_partition = self.config.partition_rows
        if 0 < command.partition_rows < per_partition:
            per_partition = int(command.partition_rows)
        count = max(1, math.ceil(rows / per_partition))
        base = pb.TrainingSetPartition(
            spine=command.spine,
            timestamp_column=timestamp_column,
            feature_refs=[r.ref for r in shape.selection.requested],
            feature_service=shape.selection.service.name if shape.selection.service else "",
            transform_version=shape.version,
            full_feature_names=command.full_feature_names,
            project=snapshot.project,
            registry_version=snapshot.version,
            partition_count=count,
            history_fingerprints={name: s.fingerprint for name, s in sources.items()},
            spine_fingerprint=spine.fingerprint,
            name=_training_set_name(command.name),
        )
        if pinned:
            base.training_dataset.CopyFrom(pinned.dataset)
        base.planned_at.FromDatetime(timestamp_seconds(self.clock()))
        if spine.expires_at is not None:
            base.spine_expires_at.FromDatetime(timestamp_seconds(spine.expires_at))
        tickets = []
        for index in range(count):
            partition = pb.TrainingSetPartition()
            partition.CopyFrom(base)
            partition.partition_index = index
            partition.row_offset = index * per_partition
            partition.row_count = min(per_partition, rows - index * per_partition) if rows else 0
            payload = partition.SerializeToString()
            tickets.append(pack(pb.TrainingSetTicket(
                partition=payload, signature=self.signer.sign(payload)
            )))
        return Plan(schema, rows, tickets, Planned(
            snapshot, [r.ref for r in shape.selection.requested], spine, sources, shape.version,
        ))

    @traced("quiver.flight.ticket.open")
    def open_ticket(self, data: bytes) -> PartitionJob:
        """Verify a ticket and start computing its partition.

        Raises:
            InvalidArgumentError: a garbled or altered ticket.
            FailedPreconditionError: a stale ticket (expired spine, changed
                history, registry version gone).
        """
        ticket = unpack_ticket(data)
        if not self.signer.verify(ticket.partition, ticket.signature):
            raise InvalidArgumentError.for_field(
                "ticket", "the ticket's signature does not match: it was altered, or issued by a "
                "server that does not share this server's ticket keys", reason="TICKET_SIGNATURE",
            )
        partition = pb.TrainingSetPartition()
        try:
            partition.ParseFromString(ticket.partition)
        except message.DecodeError:  # pragma: no cover - signed by us
            raise InvalidArgumentError.for_field("ticket", "garbled partition", reason="INVALID_TICKET") from None
        if partition.HasField("spine_expires_at"):
            expires = partition.spine_expires_at.ToMicroseconds() / 1_000_000
            if self.clock() >= expires:
                raise _stale(f"its spine expired at {timestamp_seconds(expires).isoformat()}")
        try:
            snapshot = self.snapshot(partition.registry_version)
        except FailedPreconditionError:
            raise _stale(f"registry version {partition.registry_version} no longer exists") from None
        # A ticket is not a capability: whoever presents it must be allowed its features.
        requested = [] if partition.feature_service else list(partition.feature_refs)
        shape = self.shape(
            snapshot,
            features=requested,
            feature_service=partition.feature_service,
            full_feature_names=partition.full_feature_names,
            transform_version=partition.transform_version,
        )
        self._check_ticket(requested, partition.feature_service, shape.selection.stored, snapshot)
        refs = shape.join_refs
        try:
            spine = self.open_spine(partition.spine, snapshot)
        except NotFoundError as exc:
            raise _stale(exc.message) from None
        if spine.fingerprint != partition.spine_fingerprint:
            raise _stale("its spine files changed since it was planned")
        views = [view for view, _ in group_by_view(refs)]
        if partition.HasField("training_dataset"):
            try:
                sources = self.datasets.pinned_sources(partition.training_dataset, views)
            except FailedPreconditionError as exc:
                raise _stale(exc.message) from None
        else:
            sources = self.engine.locate(views)
        for name, source in sources.items():
            if partition.history_fingerprints.get(name) != source.fingerprint:
                raise _stale(f"the history of feature view {name!r} changed since it was planned")
        rows = spine.read(partition.row_offset, partition.row_count)
        schema = shape.schema(spine.schema, partition.timestamp_column)
        joined = self.engine.join(
            rows, refs, timestamp_column=partition.timestamp_column,
            full_feature_names=shape.join_full_names, sources=sources,
        )
        if self.profiler is not None:
            # Profiles hold stored values, as the online ones do: the joined
            # columns, before on-demand views and transforms.
            joined = self.profiler.wrap(joined, _stored_partition(partition, shape), snapshot)
        return PartitionJob(schema, shape.batches(joined, schema, len(spine.schema)), partition)

    def _fit(
        self, command: pb.TrainingSetCommand, snapshot: Snapshot, spine: Spine, timestamp_column: str
    ) -> tuple[Snapshot, int]:
        if command.transform_version:
            raise InvalidArgumentError.for_field(
                "transform_version", "give fit or a transform version, not both"
            )
        # A fit stores a parameter set in the registry: a write of the project's.
        self.access.check_project(
            snapshot, Action.WRITE_OFFLINE, f"fitting the transforms of feature service "
            f"{command.feature_service!r} (stores parameters in the registry)",
            feature_service=command.feature_service,
        )
        if spine.num_rows > self.spines.max_rows:
            raise _too_many_rows(spine.num_rows, self.spines.max_rows)
        call = self.access.call()
        source = command.spine
        kind = source.WhichOneof("source")
        request = FitRequest(
            command.feature_service, spine, f"{kind}:{getattr(source, kind or 'spine_id')}",
            timestamp_column, call.principal.subject if call else command.requested_by, "flight",
        )
        fitted, parameters = fit_service(
            request, snapshot, self.registry, self.engine, self.transformations
        )
        return self.snapshot(fitted.version), parameters.version

    def _check_ticket(self, requested: list[str], service: str, pinned: Sequence[FeatureRef],
                      planned: Snapshot) -> None:
        """Check the ticket's features under the permissions in force now (the newest
        registry version), not only those of the version its data is pinned to, so a
        revoked grant stops tickets planned before it."""
        current = self.snapshot()
        if not self.access.enabled or current.version == planned.version:
            return  # `shape` has just checked them in this very version
        try:
            refs: Sequence[FeatureRef] = select(
                current, requested, service or None, field="features"
            ).stored
        except NotFoundError:
            # Features since removed: judged by what they were, under today's permissions.
            refs = pinned
        self.access.check_features(current, Action.READ_OFFLINE, refs, service=service,
                                   requested=requested)

    def feature_sets(self, name_prefix: str = "") -> Iterator[tuple[pb.FeatureSetInfo, pb.TrainingSetCommand, pa.Schema]]:
        """Every feature service and view the caller may DESCRIBE: what it is, its command
        and schema."""
        version = self.registry.latest_good_version()
        if version == 0:
            return
        snapshot = self.snapshot(version)
        describable = self.access.may_describe
        for service in snapshot.feature_services.values():
            if service.name.startswith(name_prefix) and describable(
                snapshot, "feature_service", service.name
            ):
                command = pb.TrainingSetCommand(feature_service=service.name)
                info = pb.FeatureSetInfo(
                    kind=pb.FEATURE_SET_KIND_FEATURE_SERVICE, name=service.name,
                    description=service.description, owner=service.owner, tags=service.tags,
                )
                yield self._describe(info, command, self._listed_shape(snapshot, service.name),
                                     snapshot)
        for view in snapshot.feature_views.values():
            if view.name.startswith(name_prefix) and describable(snapshot, "feature_view", view.name):
                refs = [FeatureRef(view, f).ref for f in view.schema]
                command = pb.TrainingSetCommand(features=pb.FeatureList(refs=refs))
                info = pb.FeatureSetInfo(
                    kind=pb.FEATURE_SET_KIND_FEATURE_VIEW, name=view.name,
                    description=view.description, owner=view.owner, tags=view.tags,
                )
                selection = select(snapshot, refs)
                yield self._describe(info, command, TrainingShape(selection, None, True), snapshot)

    def _listed_shape(self, snapshot: Snapshot, service: str) -> TrainingShape:
        selection = select(snapshot, feature_service=service)
        try:
            pipeline = self.transformations.pipeline(snapshot, selection, full_names=True)
        except FailedPreconditionError:
            # Not fitted yet (or its code is not deployed here): list the
            # features as they are before transforms.
            pipeline = Pipeline(selection, {}, {}, 0, True)
        return TrainingShape(selection, None if selection.plain else pipeline, True)

    @staticmethod
    def _describe(
        info: pb.FeatureSetInfo, command: pb.TrainingSetCommand, shape: TrainingShape,
        snapshot: Snapshot,
    ) -> tuple[pb.FeatureSetInfo, pb.TrainingSetCommand, pa.Schema]:
        schema = required_schema(shape, DEFAULT_TIMESTAMP_COLUMN)
        info.feature_refs.extend(r.ref for r in shape.selection.requested)
        info.join_keys.extend(f.name for f in schema if f.metadata and
                              f.metadata.get(ROLE_METADATA) == b"join_key")
        info.registry_version = snapshot.version
        command.full_feature_names = True
        return info, command, schema


def required_schema(shape: TrainingShape, timestamp_column: str) -> pa.Schema:
    """The columns a spine must have (join keys, timestamp, request fields), then the features."""
    fields: list[pa.Field] = []
    seen: set[str] = set()
    for view, _ in group_by_view(shape.join_refs):
        for key in view.join_keys:
            if key.name not in seen:
                seen.add(key.name)
                fields.append(pa.field(key.name, key.dtype.arrow_type, nullable=False,
                                       metadata={ROLE_METADATA: b"join_key"}))
    fields.append(pa.field(timestamp_column, pa.timestamp("us", tz="UTC"), nullable=False,
                           metadata={ROLE_METADATA: b"timestamp"}))
    fields.extend(f for f in shape.required_fields() if f.name not in seen)
    if shape.pipeline is None:
        features = feature_fields(shape.join_refs, shape.full_feature_names, [f.name for f in fields])
    else:
        features = [output.arrow_field() for output in shape.pipeline.outputs]
    return pa.schema([*fields, *features])


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _training_set_name(name: str) -> str:
    if name and not _NAME.match(name):
        raise InvalidArgumentError.for_field(
            "name", f"training set name {name!r} is invalid: use 1 to 128 letters, digits, "
            f"'_', '-' or '.'", reason="INVALID_NAME",
        )
    return name


def _stored_partition(
    partition: pb.TrainingSetPartition, shape: TrainingShape
) -> pb.TrainingSetPartition:
    """`partition` as the point-in-time join sees it: its stored features, by join name."""
    if shape.pipeline is None:
        return partition
    stored = pb.TrainingSetPartition()
    stored.CopyFrom(partition)
    del stored.feature_refs[:]
    stored.feature_refs.extend(ref.ref for ref in shape.join_refs)
    stored.full_feature_names = shape.join_full_names
    return stored


def _stale(why: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"the ticket is stale: {why}; plan the training set again (get_flight_info)",
        reason="STALE_TICKET",
    )


def _too_many_rows(rows: int, limit: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"the spine has {rows} rows, more than the server's limit of {limit} "
        f"(flight.max_spine_rows); split it into several training sets",
        reason="SPINE_TOO_LARGE", metadata={"max_spine_rows": str(limit)},
    )
