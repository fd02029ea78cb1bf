"""The Spark engine: a planned training set is computed by one Spark job and staged.

`SparkTrainingEngine.stage` runs while `get_flight_info` plans:

1. the spine's join keys and time bounds are written to the job's staging
   directory (`spine_bounds`): keys normalized as the local engine normalizes
   them, and per view the upper bound ``t`` and the ttl lower bound computed
   by the local engine's own integer arithmetic, so Spark only compares
   integers and never reinterprets a spine timestamp;
2. Spark joins them with each view's history (`quiver_flight.engines.spark_join`)
   and writes one directory per partition, rows sorted by spine row;
3. the history listings are checked again: files that changed while the job
   read them make the plan fail (retry) rather than serve a mixed state.

Tickets then name their partition's directory; `do_get` streams it beside the
spine's own columns (`quiver_flight.engines.staged`) without Spark.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from quiver import FeatureView, ValueType
from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.engines.base import Staged, TrainingJob
from quiver_flight.engines.local import LocalTrainingEngine
from quiver_flight.engines.staged import StagedJob, StagingArea, read_staged
from quiver_flight.history import HistorySource
from quiver_flight.keys import normalize_key
from quiver_flight.pit import PointInTimeEngine, group_by_view
from quiver_flight.spines import Spine
from quiver_flight.timestamps import TimestampRangeError, comparison_unit, per_second, to_units
from quiver_server.config import SparkConfig
from quiver_server.offline.source import filesystem_and_path
from quiver_server.registry.snapshot import FeatureRef

# Spine rows converted per step while staging the spine (bounds the memory it takes).
SPINE_CHUNK_ROWS = 1 << 20
# How long a fit's staged join may live; it is deleted once read, and the
# sweep deletes what a crash left behind.
FIT_STAGING_SECONDS = 3600.0


def key_column(name: str) -> str:
    """The staged spine column of join key `name`."""
    return f"k_{name}"


def upper_column(view: int) -> str:
    return f"hi_{view}"


def lower_column(view: int) -> str:
    return f"lo_{view}"


def view_unit(source: HistorySource) -> str:
    """The unit the view's event times are compared in (as the local engine compares them)."""
    schema = source.schema()
    if schema is None:
        return "us"
    return comparison_unit(schema.field(source.view.source.timestamp_field).type)


class SparkTrainingEngine(LocalTrainingEngine):
    """`TrainingEngine` that computes training sets as Spark jobs while planning.

    Args:
        pit: The local join, used only for tickets planned without staging.
        spark: The ``offline_store.spark`` settings.
        clock: Seconds since the epoch (expiry of staged results).
    """

    def __init__(
        self, pit: PointInTimeEngine, spark: SparkConfig, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(pit)
        self.spark = spark
        self.staging = StagingArea(pit.offline_root, clock)

    def stage(self, job: TrainingJob) -> Staged | None:
        staged = self._run(job)
        return Staged([staged.partition_path(i) for i in range(job.partitions)], job.expires_at)

    def join_spine(
        self,
        spine: Spine,
        refs: Sequence[FeatureRef],
        sources: Mapping[str, HistorySource],
        schema: pa.Schema,
        timestamp_column: str,
    ) -> Iterator[pa.RecordBatch]:
        rows = spine.num_rows
        expires_at = self.staging.clock() + FIT_STAGING_SECONDS
        staged = self._run(TrainingJob(
            spine, refs, sources, schema, timestamp_column, max(rows, 1), 1, expires_at
        ))
        partition = pb.TrainingSetPartition(
            timestamp_column=timestamp_column, row_count=rows, partition_count=1,
            staged_path=staged.partition_path(0),
        )
        try:
            batches = read_staged(
                self.offline_root, partition, spine.read(0, rows), refs, schema, self.pit.batch_rows
            )
        except BaseException:
            self.staging.delete(staged)
            raise
        return self._deleted_after(batches, staged)

    def _deleted_after(
        self, batches: Iterator[pa.RecordBatch], staged: StagedJob
    ) -> Iterator[pa.RecordBatch]:
        try:
            yield from batches
        finally:
            self.staging.delete(staged)

    def _run(self, job: TrainingJob) -> StagedJob:
        """Run the join as one Spark job into a new staging directory."""
        from quiver_flight.engines.spark_join import run_join
        from quiver_server.spark.session import spark_session

        staged = self.staging.new_job(job.expires_at)
        try:
            views = [view for view, _ in group_by_view(job.refs)]
            units = [view_unit(job.sources[view.name]) for view in views]
            write_spine_bounds(staged, job, views, units)
            session = spark_session(self.spark)
            try:
                run_join(session, staged, job, views, units)
            except Exception as exc:
                if _is_spark_error(exc):
                    # Spark fails on files that changed under it (a compaction or an
                    # erasure swapped them): that is HISTORY_CHANGED, as locally.
                    self._check_unchanged(job)
                raise
            self._check_unchanged(job)
            filesystem, path = filesystem_and_path(staged.spine)
            filesystem.delete_dir(path)
        except BaseException:
            self.staging.delete(staged)
            raise
        return staged

    def _check_unchanged(self, job: TrainingJob) -> None:
        views = [source.view for source in job.sources.values()]
        now = job.relocate(views) if job.relocate is not None else self.locate(views)
        for name, source in job.sources.items():
            if now[name].fingerprint != source.fingerprint:
                raise FailedPreconditionError(
                    f"{source.describe()} changed while the training set was computed; retry",
                    reason="HISTORY_CHANGED", metadata={"feature_view": name},
                )


def _is_spark_error(exc: BaseException) -> bool:
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    return isinstance(exc, PySparkException | Py4JError)


def write_spine_bounds(
    staged: StagedJob, job: TrainingJob, views: Sequence[FeatureView], units: Sequence[str]
) -> None:
    """Write the spine's row numbers, normalized keys and per-view time bounds as Parquet."""
    keys = {key.name: key.dtype for view in views for key in view.join_keys}
    filesystem, directory = filesystem_and_path(staged.spine)
    filesystem.create_dir(directory, recursive=True)
    schema = pa.schema(
        [("row", pa.int64())]
        + [(key_column(name), _canonical(dtype)) for name, dtype in keys.items()]
        + [f for i in range(len(views)) for f in ((upper_column(i), pa.int64()),
                                                   (lower_column(i), pa.int64()))]
    )
    total = job.spine.num_rows
    with filesystem.open_output_stream(posixpath.join(directory, "part-0.parquet")) as sink, \
            pq.ParquetWriter(sink, schema) as writer:
        for offset in range(0, total, SPINE_CHUNK_ROWS):
            rows = job.spine.read(offset, min(SPINE_CHUNK_ROWS, total - offset))
            writer.write_table(_bounds(rows, offset, job.timestamp_column, keys, views, units, schema))


def _canonical(dtype: ValueType) -> pa.DataType:
    return {ValueType.STRING: pa.string(), ValueType.BYTES: pa.binary()}.get(dtype, pa.int64())


def _bounds(
    rows: pa.Table, offset: int, timestamp_column: str, keys: Mapping[str, ValueType],
    views: Sequence[FeatureView], units: Sequence[str], schema: pa.Schema,
) -> pa.Table:
    columns: list[pa.Array] = [pa.array(np.arange(offset, offset + rows.num_rows, dtype=np.int64))]
    for name, dtype in keys.items():
        normalized = normalize_key(rows[name], dtype)
        assert normalized is not None, "checked by check_spine_schema"
        columns.append(normalized)
    times = rows[timestamp_column]
    for view, unit in zip(views, units, strict=True):
        try:
            upper, lower = to_units(times, unit), to_units(times, unit, ceil=True)
        except TimestampRangeError as exc:
            raise InvalidArgumentError.for_field(
                f"spine.{timestamp_column}", str(exc), reason="SPINE_TIMESTAMP_RANGE"
            ) from None
        ttl = view.ttl_seconds * per_second(unit)
        columns.append(pa.array(upper))
        if ttl:
            floor = np.maximum(lower, np.iinfo(np.int64).min + ttl) - ttl
            columns.append(pa.array(floor))
        else:
            columns.append(pa.nulls(rows.num_rows, pa.int64()))
    return pa.Table.from_arrays(columns, schema=schema)
