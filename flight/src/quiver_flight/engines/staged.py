"""Training sets computed ahead: where they live under the offline store, and reading them back.

An engine that runs jobs writes a planned training set to
``<offline root>/_staging/training/<expiry>-<id>/`` (see `StagingArea`): the
spine's keys and time bounds under ``spine/`` while the job runs, then the
result, one directory per partition, ``result/partition=<i>/``, each holding
Parquet files with the spine row number (``row``) and one column per feature
(``f0``, ``f1``, ... in output order), sorted by row. A directory's name
starts with its expiry (microseconds since the epoch), so expired ones are
found and deleted without reading them.

Serving a partition reads its spine rows and its staged files side by side:
spine columns come from the spine itself (unchanged, whatever their type),
features from the staged files, cast to their declared types.
"""

from __future__ import annotations

import posixpath
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import structlog

from quiver.errors import FailedPreconditionError
from quiver.flight.v1 import flight_pb2 as pb
from quiver_server.offline.columns import cast_column
from quiver_server.offline.source import filesystem_and_path, list_files, resolve_path
from quiver_server.registry.snapshot import FeatureRef

log = structlog.get_logger(__name__)

STAGING_DIRECTORY = "_staging/training"
ROW_COLUMN = "row"
PARTITION_COLUMN = "partition"
_SWEEP_EVERY_SECONDS = 60.0


def feature_column(position: int) -> str:
    """The staged column of the feature at `position` in the output."""
    return f"f{position}"


@dataclass(frozen=True)
class StagedJob:
    """One planned training set's directory."""

    relative: str  # relative to the offline root
    location: str  # absolute path or URI
    expires_at: float

    @property
    def spine(self) -> str:
        return posixpath.join(self.location, "spine")

    @property
    def result(self) -> str:
        return posixpath.join(self.location, "result")

    def partition_path(self, index: int) -> str:
        """Partition `index`'s directory, relative to the offline root."""
        return posixpath.join(self.relative, "result", f"{PARTITION_COLUMN}={index}")


class StagingArea:
    """Staged training sets under ``<offline root>/_staging/training``.

    Args:
        offline_root: The offline store root (a path or URI).
        clock: Seconds since the epoch.
    """

    def __init__(self, offline_root: str, clock: Callable[[], float] = time.time) -> None:
        self.offline_root = offline_root
        self.clock = clock
        self.filesystem, self.directory = filesystem_and_path(
            resolve_path(offline_root, STAGING_DIRECTORY)
        )
        self._last_sweep = 0.0

    def new_job(self, expires_at: float) -> StagedJob:
        """A fresh, empty job directory (and a sweep of expired ones, at most once a minute)."""
        self.sweep()
        name = f"{int(expires_at * 1_000_000):020d}-{secrets.token_hex(8)}"
        relative = posixpath.join(STAGING_DIRECTORY, name)
        location = resolve_path(self.offline_root, relative)
        self.filesystem.create_dir(posixpath.join(self.directory, name), recursive=True)
        return StagedJob(relative, location, expires_at)

    def delete(self, job: StagedJob) -> None:
        _delete_dir(self.filesystem, posixpath.join(self.directory, posixpath.basename(job.relative)))

    def sweep(self, force: bool = False) -> int:
        """Delete expired job directories; returns how many."""
        now = self.clock()
        if not force and now - self._last_sweep < _SWEEP_EVERY_SECONDS:
            return 0
        self._last_sweep = now
        try:
            found = self.filesystem.get_file_info(
                pafs.FileSelector(self.directory, allow_not_found=True)
            )
        except OSError:
            return 0
        deleted = 0
        for info in found:
            expiry = posixpath.basename(info.path).split("-", 1)[0]
            if info.type == pafs.FileType.Directory and expiry.isdigit() and int(expiry) / 1e6 <= now:
                deleted += _delete_dir(self.filesystem, info.path)
        if deleted:
            log.info("expired staged training sets deleted", count=deleted)
        return deleted


def _delete_dir(fs: pafs.FileSystem, path: str) -> int:
    try:
        fs.delete_dir(path)
        return 1
    except OSError:
        return 0


def read_staged(
    offline_root: str,
    partition: pb.TrainingSetPartition,
    rows: pa.Table,
    refs: Sequence[FeatureRef],
    schema: pa.Schema,
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """Stream a staged partition: its spine `rows` with the staged features beside them.

    Raises:
        FailedPreconditionError: the staged files are gone or do not fit the spine.
    """
    if rows.num_rows == 0:
        return iter(())
    listing = list_files(resolve_path(offline_root, partition.staged_path))
    if listing is None or not listing.files:
        raise FailedPreconditionError(
            "the ticket is stale: its training set, computed when planned, was deleted "
            "(staged results expire with their spine); plan the training set again "
            "(get_flight_info)",
            reason="STALE_TICKET",
        )
    files = [i.path for i in listing.files if i.path.endswith(".parquet")]
    return _stream(listing.filesystem, files, partition, rows, refs, schema, batch_rows)


def _stream(
    fs: pafs.FileSystem, files: list[str], partition: pb.TrainingSetPartition, rows: pa.Table,
    refs: Sequence[FeatureRef], schema: pa.Schema, batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    columns = [ROW_COLUMN, *(feature_column(i) for i in range(len(refs)))]
    opened = []
    for path in files:
        parquet = pq.ParquetFile(fs.open_input_file(path))
        if parquet.metadata.num_rows:
            first = parquet.read_row_group(0, columns=[ROW_COLUMN])[ROW_COLUMN][0].as_py()
            opened.append((first, parquet))
    done = 0
    for _, parquet in sorted(opened, key=lambda item: item[0]):
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            n = batch.num_rows
            numbers = batch.column(0)
            expected = partition.row_offset + done
            bounds = pc.min_max(numbers)
            if (done + n > rows.num_rows or bounds["min"].as_py() != expected
                    or bounds["max"].as_py() != expected + n - 1):
                raise _corrupt(partition)
            spine = rows.slice(done, n)
            features = [
                cast_column(batch.column(i + 1), ref.feature.dtype) for i, ref in enumerate(refs)
            ]
            table = pa.Table.from_arrays([*spine.columns, *features], schema=schema)
            yield from table.to_batches(max_chunksize=batch_rows)
            done += n
    if done != rows.num_rows:
        raise _corrupt(partition)


def _corrupt(partition: pb.TrainingSetPartition) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"the staged rows of partition {partition.partition_index} do not match its spine rows; "
        f"plan the training set again (get_flight_info)",
        reason="STALE_TICKET",
    )
