"""Materialization as a Spark job: executors write the online store directly.

For each view, Spark reads the window of history, keeps each entity's latest
row -- the local rule: greatest event time, then greatest created time (null
first, so it loses), then the row read last (files by path, rows in file
order) -- and every partition of the result is written by its executor
through the online store's own write path (`OnlineStore.write`), so
Aerospike's server-side filter still refuses to go back in time and running
the same window twice changes nothing. Nothing but counts (and, with feature
monitoring on, each partition's profile of the rows it wrote) comes back to
the driver.

Only stores that executors on other machines can reach qualify: the embedded
SQLite file is written by the local engine only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from quiver.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    QuiverError,
    UnavailableError,
)
from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.config import AerospikeOnlineStoreConfig, QuiverConfig
from quiver_server.governance.erasure import PendingErasures
from quiver_server.governance.files import locked
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.runs import record_runs
from quiver_server.materialize import (
    CREATED_TS,
    EVENT_TS,
    WRITE_CHUNK_ROWS,
    MaterializeProgress,
    ProgressCallback,
    ViewMaterialization,
    _plan,
    _record_watermarks,
    _ViewJob,
    _write_batch,
)
from quiver_server.monitoring.profile import ViewProfile, merge_profiles
from quiver_server.monitoring.sinks import ProfileWriter, newest_event, producer_id
from quiver_server.offline.source import list_files, resolve_path
from quiver_server.online.base import ViewTable
from quiver_server.registry.store import RegistryStore
from quiver_server.spark.frames import (
    SOURCE_FILE,
    SOURCE_ROW,
    all_valid,
    arrow_schema,
    excluding,
    feature_column,
    key_column,
    micros,
    read_listing,
)
from quiver_server.spark.session import spark_session
from quiver_server.times import micros as _micros

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_ROWS = "__rows"
_RESULT = ("rows long, entities long, superseded long, error string, reason string, "
           "profile binary")
_RESULT_SCHEMA = pa.schema([
    ("rows", pa.int64()), ("entities", pa.int64()), ("superseded", pa.int64()),
    ("error", pa.string()), ("reason", pa.string()), ("profile", pa.binary()),
])


def check_online_store(config: QuiverConfig) -> AerospikeOnlineStoreConfig:
    """The online store executors write, or why Spark cannot write this one.

    Raises:
        FailedPreconditionError: the store is the embedded SQLite file.
    """
    store = config.online_store
    if not isinstance(store, AerospikeOnlineStoreConfig):
        raise FailedPreconditionError(
            "materialization on the spark engine writes the online store from Spark executors, "
            "which cannot share the embedded SQLite file (online_store.type: sqlite); use an "
            "Aerospike online store, or materialize on the local engine "
            "(`quiver materialize --engine local`)",
            reason="ENGINE_STORE_UNSUPPORTED",
        )
    return store


def run_on_spark(
    config: QuiverConfig,
    registry: RegistryStore,
    windows: Sequence[tuple[ViewTable, datetime | None, datetime]],
    report: ProgressCallback,
    profiles: ProfileWriter | None = None,
) -> list[ViewMaterialization]:
    """Materialize `windows` with Spark; progress, watermarks and profiles as on the local
    engine."""
    store = check_online_store(config)
    jobs = [_plan(config, table, start, end) for table, start, end in windows]
    session = spark_session(config.offline_store.spark)
    results: list[ViewMaterialization] = []
    done: dict[str, datetime] = {}
    paths = GovernancePaths.of(config)
    try:
        for job in jobs:
            if job.dataset is None:
                results.append(ViewMaterialization(job.table.name, job.start, job.end, 0, 0, 0, 0, 0.0))
                continue
            began = time.perf_counter()
            report(MaterializeProgress(job.table.name, "start"))
            # As on the local engine: the view's lock is held shared while the job
            # reads and its executors write, so an erasure (exclusive) deletes online
            # rows after them, and pending erasures are read under it.
            with locked(paths.view_lock(job.table.name), shared=True):
                latest = latest_rows(session, config, job)
                counts = write_partitions(latest, store, job,
                                          config.offline_store.spark.write_partitions,
                                          profile=profiles is not None)
            if profiles is not None and counts.profile is not None:
                profiles.save(counts.profile)
            outcome = ViewMaterialization(
                job.table.name, job.start, job.end, counts.rows, counts.entities,
                counts.entities - counts.superseded, counts.superseded,
                time.perf_counter() - began,
            )
            report(MaterializeProgress(job.table.name, "done", outcome.entities, result=outcome))
            results.append(outcome)
            done[job.table.name] = job.end
    finally:
        if done:
            _record_watermarks(registry, done, {j.table.name: j.table.generation for j in jobs})
            record_runs(paths, [r for r in results if r.view in done])
    return results


def latest_rows(session: SparkSession, config: QuiverConfig, job: _ViewJob) -> DataFrame:
    """Each entity's latest row in the window, shaped as the local engine's write chunks.

    Columns: the join keys (canonical types), ``__event_ts`` and
    ``__created_ts`` (int microseconds), the features (timestamps as int
    microseconds) and ``__rows``, the history rows the entity had in the window.
    Entities of pending erasures are left out (call it under the view's lock).
    """
    from pyspark.sql import functions as F

    view = job.table.view
    location = resolve_path(config.offline_root, view.source.path)
    listing = list_files(location)
    assert listing is not None and listing.files, "checked by _plan"
    schema = arrow_schema(listing)
    assert schema is not None
    source_of = {name: column for column, name in view.source.field_mapping.items()}
    keys = [source_of.get(k.name, k.name) for k in view.join_keys]
    event_column = view.source.timestamp_field
    created_column = view.source.created_timestamp_field
    event = micros(event_column, schema.field(event_column).type)
    history = read_listing(session, location, listing)
    window = event < _micros(job.end)
    if job.start is not None:
        window = (event >= _micros(job.start)) & window
    features = []
    for feature in view.schema:
        column = source_of.get(feature.name, feature.name)
        arrow_type = schema.field(column).type
        value = (micros(column, arrow_type) if feature.dtype.name == "TIMESTAMP"
                 else feature_column(column, arrow_type, feature.dtype))
        features.append(value.alias(feature.name))
    created = micros(created_column, schema.field(created_column).type) if created_column else None
    # Entities whose erasure was requested are not written back online (as locally).
    erasing, _ = PendingErasures(GovernancePaths.of(config)).for_view(view)
    if erasing:
        window = window & excluding(
            [key_column(s, k.dtype) for s, k in zip(keys, view.join_keys, strict=True)], erasing
        )
    rows = history.where(all_valid([*keys, event_column]) & window).select(
        *(key_column(s, k.dtype).alias(k.name) for s, k in zip(keys, view.join_keys, strict=True)),
        F.struct(
            event.alias("e"),
            (created if created is not None else F.lit(None).cast("bigint")).alias("c"),
            F.col(SOURCE_FILE).alias("f"), F.col(SOURCE_ROW).alias("r"),
        ).alias("order"),
        F.struct(
            event.alias(EVENT_TS),
            (created if created is not None else F.lit(0).cast("bigint")).alias(CREATED_TS),
            *features,
        ).alias("row"),
    )
    # Struct ordering puts a null created time first, so it loses (the local "at_start").
    latest = rows.groupBy(*view.join_key_names).agg(
        F.max_by("row", "order").alias("row"), F.count(F.lit(1)).alias(_ROWS)
    )
    return latest.select(*view.join_key_names, "row.*", _ROWS)


@dataclass(frozen=True)
class Counts:
    rows: int
    entities: int
    superseded: int
    profile: ViewProfile | None = None


def write_partitions(
    latest: DataFrame, store: AerospikeOnlineStoreConfig, job: _ViewJob, partitions: int,
    *, profile: bool = False,
) -> Counts:
    """Write `latest` from the executors, one store connection per partition.

    Args:
        latest: `latest_rows`.
        store: The online store.
        job: The view's planned window.
        partitions: Repartition to this many writers first; 0 keeps Spark's.
        profile: Also profile the rows written (feature monitoring): each
            executor profiles its partition and the driver merges them.

    Raises:
        The QuiverError an executor's store raised (e.g. UnavailableError), by type.
    """
    if partitions > 0:
        latest = latest.repartition(partitions)
    task = _WriteTask(store, job, profile)
    # One row per partition comes back: counts, an error, a profile.
    rows = entities = superseded = 0
    found: list[ViewProfile] = []
    types = {f.name: f.dtype for f in job.table.view.schema}
    for part in latest.mapInArrow(task, _RESULT).collect():
        if part["error"] is not None:
            raise _executor_error(str(part["error"]), part["reason"])
        rows += int(part["rows"])
        entities += int(part["entities"])
        superseded += int(part["superseded"])
        if part["profile"] is not None:
            found.append(ViewProfile.from_proto(pb.Profile.FromString(part["profile"]), types))
    return Counts(rows, entities, superseded, merge_profiles(found))


class _WriteTask:
    """What each executor runs over its partition (pickled by reference to this module)."""

    def __init__(self, store: AerospikeOnlineStoreConfig, job: _ViewJob, profile: bool) -> None:
        self.store = store
        self.table = job.table
        self.key_names = job.key_names
        self.has_created = job.has_created
        self.window = (job.start, job.end)
        self.profile = profile

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from quiver_server.online.aerospike import AerospikeOnlineStore

        job = _ViewJob(self.table, None, datetime.min, None, {}, None, self.key_names, self.has_created)
        rows = entities = superseded = 0
        error = reason = None
        profile = None
        try:
            with AerospikeOnlineStore(self.store) as store:
                for batch in batches:
                    rows += int(pc.sum(batch.column(_ROWS)).as_py() or 0)
                    table = pa.Table.from_batches([batch])
                    if self.profile and table.num_rows:
                        profile = self._observe(profile, table)
                    for offset in range(0, table.num_rows, WRITE_CHUNK_ROWS):
                        chunk = _write_batch(job, table.slice(offset, WRITE_CHUNK_ROWS))
                        result = store.write(self.table, chunk)
                        entities += result.rows
                        superseded += result.superseded
        except QuiverError as exc:
            # Errors travel back as data: the driver raises them with their own type.
            error, reason = f"{type(exc).__name__}: {exc.message}", exc.reason
        yield pa.RecordBatch.from_pylist(
            [{"rows": rows, "entities": entities, "superseded": superseded, "error": error,
              "reason": reason,
              "profile": profile.to_proto().SerializeToString() if profile is not None else None}],
            schema=_RESULT_SCHEMA,
        )

    def _observe(self, profile: ViewProfile | None, table: pa.Table) -> ViewProfile:
        """Profile the rows as the local engine does (every row; the window starts at the
        first event when the job has no start)."""
        start, end = self.window
        first = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            microseconds=int(pc.min(table.column(EVENT_TS)).as_py())
        )
        part = ViewProfile.for_view(self.table.view, "materialize", start or first, end,
                                    producer=producer_id())
        part.observe(table)
        part.note_event_time(newest_event(table.column(EVENT_TS)))
        if profile is None:
            return part
        profile.merge(part)
        return profile


# The errors a store's write raises, by the name an executor reports.
_STORE_ERRORS: dict[str, type[QuiverError]] = {
    e.__name__: e
    for e in (UnavailableError, DeadlineExceededError, InvalidArgumentError, FailedPreconditionError)
}


def _executor_error(text: str, reason: str | None) -> QuiverError:
    name, _, message = text.partition(": ")
    kind = _STORE_ERRORS.get(name, UnavailableError)
    return kind(f"a Spark executor writing the online store: {message or text}", reason=reason)
