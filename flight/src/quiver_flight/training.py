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

from quiver import Action
from quiver.convert import DEFAULT_TIMESTAMP_COLUMN, pack
from quiver.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    QuiverError,
    ResourceExhaustedError,
)
from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.convert import timestamp_seconds, unpack_ticket
from quiver_flight.pit import (
    PointInTimeEngine,
    feature_fields,
    group_by_view,
    output_schema,
)
from quiver_flight.spines import Spine, SpineStore
from quiver_flight.tickets import TicketSigner
from quiver_server.auth.access import AccessControl
from quiver_server.config import FlightConfig
from quiver_server.monitoring.training_sets import TrainingSetProfiler
from quiver_server.offline.source import filesystem_and_path, resolve_path
from quiver_server.registry.snapshot import FeatureRef, Snapshot
from quiver_server.registry.store import RegistryStore
from quiver_server.telemetry.spans import traced

ROLE_METADATA = b"quiver.role"
_SNAPSHOTS_KEPT = 8


@dataclass(frozen=True)
class Plan:
    """A planned training set: its schema, rows and signed partitions."""

    schema: pa.Schema
    rows: int
    tickets: list[bytes]


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
    ) -> None:
        self.registry = registry
        self.profiler = profiler
        self.access = access or AccessControl.disabled()
        self.engine = engine
        self.spines = spines
        self.signer = signer
        self.config = config
        self.clock = clock
        self._snapshots: OrderedDict[int, Snapshot] = OrderedDict()
        self._lock = threading.Lock()

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

    def resolve(self, command: pb.TrainingSetCommand, snapshot: Snapshot) -> list[FeatureRef]:
        """The command's features, once the caller may READ_OFFLINE every one."""
        selection = command.WhichOneof("selection")
        service = command.feature_service if selection == "feature_service" else ""
        requested = list(command.features.refs) if selection == "features" else []
        try:
            if service:
                refs = snapshot.resolve(feature_service=service)
            else:
                refs = snapshot.resolve(features=requested, field="features")
        except NotFoundError as exc:
            raise self.access.unknown(
                exc, snapshot, Action.READ_OFFLINE, requested=requested, service=service
            ) from None
        self.access.check_features(
            snapshot, Action.READ_OFFLINE, refs, service=service, requested=requested
        )
        return refs

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
        raise InvalidArgumentError.for_field(
            "spine", "name a spine: spine_id (from do_put) or parquet_path", reason="MISSING_SPINE"
        )

    def schema(self, command: pb.TrainingSetCommand) -> pa.Schema:
        """The result schema, or without a spine the columns a spine needs plus the features."""
        snapshot = self.snapshot()
        refs = self.resolve(command, snapshot)
        timestamp_column = command.timestamp_column or DEFAULT_TIMESTAMP_COLUMN
        if not command.HasField("spine"):
            return required_schema(refs, timestamp_column, command.full_feature_names)
        spine = self.open_spine(command.spine, snapshot)
        return output_schema(spine.schema, refs, timestamp_column=timestamp_column,
                             full_feature_names=command.full_feature_names)

    @traced("quiver.flight.plan")
    def plan(self, command: pb.TrainingSetCommand) -> Plan:
        """Check a training-set command and cut it into signed partitions.

        Raises:
            InvalidArgumentError, NotFoundError, FailedPreconditionError,
            ResourceExhaustedError: naming what is wrong.
        """
        snapshot = self.snapshot()
        refs = self.resolve(command, snapshot)
        timestamp_column = command.timestamp_column or DEFAULT_TIMESTAMP_COLUMN
        spine = self.open_spine(command.spine, snapshot)
        schema = output_schema(spine.schema, refs, timestamp_column=timestamp_column,
                               full_feature_names=command.full_feature_names)
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
        sources = self.engine.locate(views)
        self.engine.check_sources(refs, sources)
        per_partition = self.config.partition_rows
        if 0 < command.partition_rows < per_partition:
            per_partition = int(command.partition_rows)
        count = max(1, math.ceil(rows / per_partition))
        base = pb.TrainingSetPartition(
            spine=command.spine,
            timestamp_column=timestamp_column,
            feature_refs=[r.ref for r in refs],
            full_feature_names=command.full_feature_names,
            project=snapshot.project,
            registry_version=snapshot.version,
            partition_count=count,
            history_fingerprints={name: s.fingerprint for name, s in sources.items()},
            spine_fingerprint=spine.fingerprint,
            name=_training_set_name(command.name),
        )
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
        return Plan(schema, rows, tickets)

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
        refs = snapshot.resolve(features=list(partition.feature_refs))
        self._check_ticket(list(partition.feature_refs), refs)
        try:
            spine = self.open_spine(partition.spine, snapshot)
        except NotFoundError as exc:
            raise _stale(exc.message) from None
        if spine.fingerprint != partition.spine_fingerprint:
            raise _stale("its spine files changed since it was planned")
        sources = self.engine.locate([view for view, _ in group_by_view(refs)])
        for name, source in sources.items():
            if partition.history_fingerprints.get(name) != source.fingerprint:
                raise _stale(f"the history of feature view {name!r} changed since it was planned")
        rows = spine.read(partition.row_offset, partition.row_count)
        schema = output_schema(spine.schema, refs, timestamp_column=partition.timestamp_column,
                               full_feature_names=partition.full_feature_names)
        batches = self.engine.join(
            rows, refs, timestamp_column=partition.timestamp_column,
            full_feature_names=partition.full_feature_names, sources=sources,
        )
        if self.profiler is not None:
            batches = self.profiler.wrap(batches, partition, snapshot)
        return PartitionJob(schema, batches, partition)

    def _check_ticket(self, requested: list[str], pinned: list[FeatureRef]) -> None:
        """A ticket is not a capability: whoever presents it must be allowed its features
        by the permissions in force now (the newest registry version), not those of the
        version its data is pinned to, so a revoked grant stops old tickets too."""
        if not self.access.enabled:
            return
        current = self.snapshot()
        try:
            refs = current.resolve(features=requested)
        except NotFoundError:
            # A feature since removed: judged by what it was, under today's permissions.
            refs = pinned
        self.access.check_features(current, Action.READ_OFFLINE, refs, requested=requested)

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
                refs = snapshot.resolve(feature_service=service.name)
                info = pb.FeatureSetInfo(
                    kind=pb.FEATURE_SET_KIND_FEATURE_SERVICE, name=service.name,
                    description=service.description, owner=service.owner, tags=service.tags,
                )
                yield self._describe(info, command, refs, snapshot)
        for view in snapshot.feature_views.values():
            if view.name.startswith(name_prefix) and describable(snapshot, "feature_view", view.name):
                refs = [FeatureRef(view, f) for f in view.schema]
                command = pb.TrainingSetCommand(features=pb.FeatureList(refs=[r.ref for r in refs]))
                info = pb.FeatureSetInfo(
                    kind=pb.FEATURE_SET_KIND_FEATURE_VIEW, name=view.name,
                    description=view.description, owner=view.owner, tags=view.tags,
                )
                yield self._describe(info, command, refs, snapshot)

    @staticmethod
    def _describe(
        info: pb.FeatureSetInfo, command: pb.TrainingSetCommand, refs: Sequence[FeatureRef],
        snapshot: Snapshot,
    ) -> tuple[pb.FeatureSetInfo, pb.TrainingSetCommand, pa.Schema]:
        schema = required_schema(refs, DEFAULT_TIMESTAMP_COLUMN, full_feature_names=True)
        info.feature_refs.extend(r.ref for r in refs)
        info.join_keys.extend(f.name for f in schema if f.metadata and
                              f.metadata.get(ROLE_METADATA) == b"join_key")
        info.registry_version = snapshot.version
        command.full_feature_names = True
        return info, command, schema


def required_schema(
    refs: Sequence[FeatureRef], timestamp_column: str, full_feature_names: bool
) -> pa.Schema:
    """The columns a spine must have (join keys, timestamp), then the features."""
    fields: list[pa.Field] = []
    seen: set[str] = set()
    for view, _ in group_by_view(refs):
        for key in view.join_keys:
            if key.name not in seen:
                seen.add(key.name)
                fields.append(pa.field(key.name, key.dtype.arrow_type, nullable=False,
                                       metadata={ROLE_METADATA: b"join_key"}))
    fields.append(pa.field(timestamp_column, pa.timestamp("us", tz="UTC"), nullable=False,
                           metadata={ROLE_METADATA: b"timestamp"}))
    return pa.schema([*fields, *feature_fields(refs, full_feature_names, [f.name for f in fields])])


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _training_set_name(name: str) -> str:
    if name and not _NAME.match(name):
        raise InvalidArgumentError.for_field(
            "name", f"training set name {name!r} is invalid: use 1 to 128 letters, digits, "
            f"'_', '-' or '.'", reason="INVALID_NAME",
        )
    return name


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
