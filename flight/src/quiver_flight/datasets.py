"""Training datasets on the Flight server: create one, pull one again.

Creating a dataset plans the training set as usual, then pins what its rows
depend on -- the registry version, the resolved feature references, each
view's history files (path, size, modification time) -- copies the spine
under ``_datasets/`` and records all of it as the next version of the name
(`quiver_server.governance.datasets`). Its tickets read the kept spine and
exactly the pinned files, so the first pull and every later one go through
the same code and yield the same rows; files pushed since are not read, and a
pinned file that was rewritten (erasure) or merged (compaction) makes the
pull fail with FAILED_PRECONDITION naming the file and what changed it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from quiver import FeatureView
from quiver.convert import DEFAULT_TIMESTAMP_COLUMN
from quiver.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from quiver.flight.v1 import flight_pb2 as pb
from quiver.registry.v1 import governance_pb2 as gpb
from quiver_flight.history import HistorySource, with_exclusions
from quiver_flight.spines import Spine, ipc_null_count, open_ipc
from quiver_flight.training import Pinned, Plan, Planned, TrainingSets
from quiver_server.governance.datasets import DatasetStore, check_name, label
from quiver_server.governance.erasure import PendingErasures
from quiver_server.governance.files import locked
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.spinefile import (
    KeptFile,
    file_sha256,
    new_spine_path,
    read_spine,
    write_spine,
)
from quiver_server.governance.spinefile import locate as locate_spine
from quiver_server.offline.source import Listing, filesystem_and_path, list_files, resolve_path
from quiver_server.registry.snapshot import Snapshot

_COPY_ROWS = 65_536


@dataclass(frozen=True)
class KeptSpine(Spine):
    """The kept spine of a training dataset: an Arrow IPC file, read by row range."""

    name: str
    schema: pa.Schema
    num_rows: int
    expires_at: float | None
    fingerprint: str
    filesystem: pafs.FileSystem
    path: str
    offsets: tuple[int, ...]  # first row of each record batch, then the row count

    def read(self, offset: int, count: int) -> pa.Table:
        if count <= 0:
            return self.schema.empty_table()
        reader = self._reader()
        batches: list[pa.RecordBatch] = []
        first = 0
        for i in range(len(self.offsets) - 1):
            start, stop = self.offsets[i], self.offsets[i + 1]
            if stop > offset and start < offset + count:
                if not batches:
                    first = start
                batches.append(reader.get_batch(i))
        table = pa.Table.from_batches(batches, schema=self.schema)
        return table.slice(offset - first, count)

    def null_count(self, column: str) -> int:
        return ipc_null_count(self._reader(), self.schema.get_field_index(column))

    def _reader(self) -> pa.ipc.RecordBatchFileReader:
        return open_ipc(self.filesystem, self.path)


class TrainingDatasets:
    """Creates and re-plans stored training datasets for a `TrainingSets`."""

    def __init__(self, training: TrainingSets, paths: GovernancePaths) -> None:
        self.training = training
        self.paths = paths
        self.store = DatasetStore(paths)
        self.pending = PendingErasures(paths)

    def create(
        self, command: pb.CreateTrainingDatasetCommand, created_by: str
    ) -> tuple[Plan, gpb.TrainingDatasetInfo]:
        """Plan `command.training_set`, record it as a new dataset version, issue its tickets.

        Raises:
            InvalidArgumentError: a bad name, or what `TrainingSets.plan` refuses.
            FailedPreconditionError: an erasure in progress on one of its views.
        """
        name = check_name(command.name)
        request = command.training_set
        if not request.HasField("spine"):
            raise InvalidArgumentError.for_field(
                "training_set.spine", "name the spine of the training dataset", reason="MISSING_SPINE"
            )
        planned = self.training.plan(request).planned  # checked; its tickets are not used
        sources = list(planned.sources.values())
        # Shared with other creations, exclusive with an erasure marking the
        # datasets its entities are in: a request recorded after the check
        # below waits to mark until this dataset is published.
        with locked(self.paths.datasets_lock, shared=True):
            self._refuse_pending([source.view for source in sources])
            histories = [_pin(source) for source in sources]
            kept = write_spine(
                self.paths.offline_root, new_spine_path(name), planned.spine.schema,
                _spine_batches(planned.spine),
            )
            record = self.store.publish(self._record(command, planned, histories, kept, created_by))
        plan = self._issue(record, planned.snapshot, request.partition_rows)
        return plan, gpb.TrainingDatasetInfo(
            dataset=record, status=gpb.DatasetStatus(reproducible=True)
        )

    @staticmethod
    def _record(
        command: pb.CreateTrainingDatasetCommand, planned: Planned,
        histories: list[gpb.ViewHistory], kept: KeptFile, created_by: str,
    ) -> gpb.TrainingDataset:
        request = command.training_set
        return gpb.TrainingDataset(
            name=command.name,
            project=planned.snapshot.project,
            registry_version=planned.snapshot.version,
            feature_service=request.feature_service
            if request.WhichOneof("selection") == "feature_service" else "",
            feature_refs=planned.feature_refs,
            transform_version=planned.transform_version,
            full_feature_names=request.full_feature_names,
            timestamp_column=request.timestamp_column or DEFAULT_TIMESTAMP_COLUMN,
            spine=gpb.DatasetSpine(
                path=kept.path, source_fingerprint=planned.spine.fingerprint,
                sha256=kept.sha256, rows=kept.rows, columns=planned.spine.schema.names,
            ),
            histories=histories,
            row_count=kept.rows,
            created_by=created_by,
            description=command.description,
            tags=dict(command.tags),
        )

    def pull(self, command: pb.TrainingDatasetCommand) -> tuple[Plan, gpb.TrainingDatasetInfo]:
        """Plan a stored dataset again.

        Raises:
            NotFoundError: no such dataset or version.
            FailedPreconditionError: it can no longer be pulled cell for cell,
                naming what changed.
        """
        record = self._read(command.name, command.version)
        versions = set(self.training.registry.versions())
        try:
            snapshot: Snapshot | None = self.training.snapshot(record.registry_version)
        except FailedPreconditionError:  # pruned, or set aside as corrupt
            snapshot = None
        if snapshot is not None:
            # The caller may read its features before learning anything about its files.
            self.training.command_shape(_command_for(record, command.partition_rows), snapshot)
        status = self.store.status(record, versions)
        if snapshot is None and record.registry_version in versions:
            status.reasons.append(f"registry version {record.registry_version} cannot be read")
            status.reproducible = False
        if snapshot is not None and status.reproducible:
            status.reasons.extend(
                f"erasure {e} (in progress) removes entities of its spine"
                for e in self._pending_on_spine(record, snapshot)
            )
            status.reproducible = not status.reasons
        if status.reproducible:
            fs, path = locate_spine(self.paths.offline_root, record.spine.path)
            if file_sha256(fs, path) != record.spine.sha256:
                status.reproducible = False
                status.reasons.append(f"its kept spine {record.spine.path!r} was altered")
        if snapshot is None or not status.reproducible:
            raise FailedPreconditionError(
                f"training dataset {label(record)} can no longer be pulled cell for cell: "
                + "; ".join(status.reasons),
                reason="DATASET_NOT_REPRODUCIBLE",
                metadata={"training_dataset": label(record)},
            )
        plan = self._issue(record, snapshot, command.partition_rows)
        return plan, gpb.TrainingDatasetInfo(dataset=record, status=status)

    def open_spine(self, ref: gpb.TrainingDatasetRef) -> KeptSpine:
        """The kept spine of a dataset version, once the caller may read its features
        (the spine holds its labels)."""
        record = self._read(ref.name, ref.version)
        if self.training.access.enabled:
            self.training.command_shape(
                _command_for(record, 0), self.training.snapshot(record.registry_version)
            )
        fs, path = locate_spine(self.paths.offline_root, record.spine.path)
        listing = list_files(resolve_path(self.paths.offline_root, record.spine.path))
        if listing is None:
            raise FailedPreconditionError(
                f"training dataset {label(record)}: its kept spine {record.spine.path!r} is gone",
                reason="DATASET_NOT_REPRODUCIBLE", metadata={"training_dataset": label(record)},
            )
        erasing = self._pending_on_spine(record, self._views_snapshot(record))
        if erasing:
            raise FailedPreconditionError(
                f"an erasure ({', '.join(erasing)}) is in progress on entities of the kept spine "
                f"of training dataset {label(record)}; use it once the erasure completes "
                f"(`quiver erasures resume` completes it)",
                reason="ERASURE_IN_PROGRESS", metadata={"training_dataset": label(record)},
            )
        if isinstance(fs, pafs.LocalFileSystem):
            reader = ipc.open_file(pa.memory_map(path))
        else:
            reader = ipc.open_file(fs.open_input_file(path))
        offsets = [0]
        for i in range(reader.num_record_batches):
            offsets.append(offsets[-1] + reader.get_batch(i).num_rows)
        return KeptSpine(
            f"training dataset {label(record)}", reader.schema, offsets[-1], None,
            listing.fingerprint, fs, path, tuple(offsets),
        )

    def pinned_sources(
        self, ref: gpb.TrainingDatasetRef, views: Sequence[FeatureView],
        record: gpb.TrainingDataset | None = None,
    ) -> dict[str, HistorySource]:
        """The views' history as the dataset pinned it, with pending erasures left out.

        Raises:
            FailedPreconditionError: a pinned file is gone or changed, named.
        """
        record = record or self.store.read(ref.name, ref.version)
        current, changed = self.store.current_files(record)
        if changed:
            raise FailedPreconditionError(
                f"training dataset {label(record)} can no longer be pulled cell for cell: "
                + "; ".join(changed),
                reason="DATASET_NOT_REPRODUCIBLE", metadata={"training_dataset": label(record)},
            )
        pinned = {h.feature_view: h for h in record.histories}
        sources = {}
        for view in views:
            history = pinned.get(view.name)
            if history is None:
                raise FailedPreconditionError(
                    f"training dataset {label(record)} pins no history of feature view {view.name!r}",
                    reason="DATASET_NOT_REPRODUCIBLE",
                )
            location = resolve_path(self.paths.offline_root, history.source_path)
            fs, base = filesystem_and_path(location)
            single = len(history.files) == 1 and history.files[0].path == ""
            excluded, tag = self.pending.for_view(view)
            # The files as they are now: the pinned ones, unless an erasure of
            # entities outside this dataset rewrote them (same rows for it).
            infos = tuple(current[view.name])
            fingerprint = Listing(fs, base, not single, infos).fingerprint
            sources[view.name] = HistorySource(
                view=view, location=location, filesystem=fs, base=base, is_directory=not single,
                files=tuple(i.path for i in infos),
                fingerprint=with_exclusions(fingerprint, tag), excluded=tuple(excluded),
                listed=fingerprint,
            )
        return sources

    def _issue(self, record: gpb.TrainingDataset, snapshot: Snapshot, partition_rows: int) -> Plan:
        ref = gpb.TrainingDatasetRef(name=record.name, version=record.version)
        pinned = Pinned(
            dataset=ref, snapshot=snapshot, spine=self.open_spine(ref),
            sources=lambda views: self.pinned_sources(ref, views, record),
        )
        return self.training.plan(_command_for(record, partition_rows), pinned=pinned)

    def _read(self, name: str, version: int) -> gpb.TrainingDataset:
        """A stored version, as RegistryService shows it: to a caller who may not
        describe every view it reads, the dataset (and its versions) does not exist.

        Raises:
            NotFoundError: no such version, or one the caller may not see.
        """
        try:
            record = self.store.read(name, version)
        except NotFoundError:
            # "no version N; it has ..." lists versions: only for who may see the dataset.
            if not self.training.access.enabled or not self.store.versions(name) \
                    or self._visible(self.store.read(name)):
                raise
            raise _hidden(name) from None
        if not self._visible(record):
            raise _hidden(name)
        return record

    def _visible(self, record: gpb.TrainingDataset) -> bool:
        if not self.training.access.enabled:
            return True
        snapshot = self.training.snapshot()  # the newest permissions
        return all(self.training.access.may_describe(snapshot, "feature_view", h.feature_view)
                   for h in record.histories)

    def _views_snapshot(self, record: gpb.TrainingDataset) -> Snapshot:
        """The registry version the dataset was resolved in, else the newest (for its views' keys)."""
        try:
            return self.training.snapshot(record.registry_version)
        except FailedPreconditionError:
            return self.training.snapshot()

    def _pending_on_spine(self, record: gpb.TrainingDataset, snapshot: Snapshot) -> list[str]:
        """Erasures requested, not yet completed, that remove rows of the dataset's kept
        spine: until one has marked the dataset, the spine still holds those rows."""
        names = {n for r in self.pending.requests() for n in r.views}
        views = [snapshot.feature_views[h.feature_view] for h in record.histories
                 if h.feature_view in names and h.feature_view in snapshot.feature_views]
        if not views:
            return []
        try:
            spine = read_spine(self.paths.offline_root, record.spine.path)
        except FileNotFoundError:
            return []
        return self.pending.on_spine(spine, views)

    def _refuse_pending(self, views: Sequence[FeatureView]) -> None:
        for view in views:
            _, tag = self.pending.for_view(view)
            if tag:
                raise FailedPreconditionError(
                    f"an erasure ({tag}) is in progress on feature view {view.name!r}; create the "
                    f"training dataset once it completes (`quiver erasures resume` completes it)",
                    reason="ERASURE_IN_PROGRESS", metadata={"feature_view": view.name},
                )


def _hidden(name: str) -> NotFoundError:
    """What a missing dataset is answered with (`DatasetStore.read`'s words)."""
    return NotFoundError(f"training dataset {name!r} does not exist", reason="DATASET_NOT_FOUND",
                         metadata={"training_dataset": name})


def _command_for(record: gpb.TrainingDataset, partition_rows: int) -> pb.TrainingSetCommand:
    """The training-set command that pulls a stored dataset version."""
    command = pb.TrainingSetCommand(
        spine=pb.SpineSource(
            training_dataset=gpb.TrainingDatasetRef(name=record.name, version=record.version)
        ),
        full_feature_names=record.full_feature_names,
        timestamp_column=record.timestamp_column,
        partition_rows=partition_rows,
        # Pulls are profiled under the version's own name (monitoring).
        name=record.profile,
        # The same transform parameters as the first pull, never a newer fit.
        transform_version=record.transform_version,
    )
    # A service's transforms apply to it, so it is named as it was.
    if record.feature_service:
        command.feature_service = record.feature_service
    else:
        command.features.refs.extend(record.feature_refs)
    return command


def _pin(source: HistorySource) -> gpb.ViewHistory:
    """The files of `source` with their sizes and modification times."""
    infos = source.filesystem.get_file_info(list(source.files)) if source.files else []
    listing = Listing(source.filesystem, source.base, source.is_directory, tuple(infos))
    if listing.fingerprint != source.fingerprint:
        raise FailedPreconditionError(
            f"{source.describe()} changed while the training dataset was created; retry",
            reason="HISTORY_CHANGED", metadata={"feature_view": source.view.name},
        )
    return gpb.ViewHistory(
        feature_view=source.view.name,
        source_path=source.view.source.path,
        fingerprint=source.fingerprint,
        files=[gpb.HistoryFile(path=info.path[len(source.base):].lstrip("/"), size=info.size,
                               mtime_ns=info.mtime_ns) for info in infos],
    )


def _spine_batches(spine: Spine) -> Iterator[pa.RecordBatch]:
    for offset in range(0, spine.num_rows, _COPY_ROWS):
        yield from spine.read(offset, min(_COPY_ROWS, spine.num_rows - offset)).to_batches()


def _join(base: str, relative: str) -> str:
    return f"{base.rstrip('/')}/{relative}" if relative else base
