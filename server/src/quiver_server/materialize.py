"""Materialization: copy the latest history row of every entity into the online store.

For each online feature view and a window ``[start, end)`` of event time:

1. scan the view's Parquet history, reading only the join keys, features and
   timestamps, with the window as a dataset filter (row groups outside it are
   skipped from their statistics);
2. keep each entity's latest row: greatest event timestamp, then greatest
   created timestamp, then the row read last (a stable Arrow sort, no Python loop);
3. write those rows through `OnlineStore.write` in chunks.

The store's write rule (online/base.py) makes this safe to repeat and to race
with pushes: an older row never replaces a newer one, and materializing the
same window twice changes nothing.

Timestamps: tz-aware columns are converted to UTC; naive timestamp columns are
taken to be UTC already. Naive `start`/`end` arguments are UTC too. A window
ends at the clock plus `serving.max_future_seconds` at the latest: history rows
from further in the future wait for a later run (as a push of them is refused).

Every view's source is checked (columns present, types compatible) before
anything is written, so a repo with one bad source writes nothing at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from quiver import FeatureView, ValueType
from quiver.errors import (
    DefinitionError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.config import QuiverConfig
from quiver_server.governance.erasure import PendingErasures
from quiver_server.governance.files import locked
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.runs import record_runs
from quiver_server.offline.columns import cast_options, compatible
from quiver_server.offline.source import (
    Listing,
    list_files,
    reading_listed,
    resolve_path,
    view_dataset,
)
from quiver_server.online.base import OnlineStore, ViewTable, WriteBatch
from quiver_server.online.factory import open_online_store
from quiver_server.online.keys import encode_keys
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore
from quiver_server.times import latest_allowed, micros

if TYPE_CHECKING:
    from quiver_server.monitoring.sinks import ProfileWriter

__all__ = [
    "MaterializeProgress",
    "ProgressCallback",
    "ViewMaterialization",
    "materialize_incremental",
    "materialize_range",
]

EVENT_TS = "__event_ts"
CREATED_TS = "__created_ts"
# Rows per OnlineStore.write: one transaction each in SQLite, one batch in Aerospike.
WRITE_CHUNK_ROWS = 50_000
# History rows buffered before they are reduced to the latest row per entity, so
# memory follows the number of entities rather than the length of the history.
COMPACT_ROWS = 4_000_000
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class ViewMaterialization:
    """What materializing one view did.

    Attributes:
        view: The feature view.
        start: Window start (inclusive); None means the beginning of history.
        end: Window end (exclusive).
        rows_read: History rows inside the window.
        entities: Distinct entities among them, i.e. rows offered to the store.
        rows_written: Rows the store applied; the rest were superseded by newer
            rows already online.
        superseded: Rows the store kept its newer row for.
        seconds: Wall time for this view.
    """

    view: str
    start: datetime | None
    end: datetime
    rows_read: int
    entities: int
    rows_written: int
    superseded: int
    seconds: float

    def __str__(self) -> str:
        start = self.start.isoformat() if self.start else "beginning"
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.view}: [{start}, {self.end.isoformat()}) {self.rows_read:,} rows read, "
            f"{self.entities:,} entities, {self.rows_written:,} written "
            f"({self.superseded:,} superseded) in {self.seconds:.2f} s ({rate:,.0f} rows/s)"
        )


@dataclass(frozen=True)
class MaterializeProgress:
    """One step of materializing one view, as the `progress` callback receives it.

    Attributes:
        view: The feature view.
        phase: ``start``; then ``read`` (after each batch of history read) and
            ``write`` (after each chunk written to the store); then ``done``.
        rows: History rows read so far (read), rows offered to the store so far
            (write), or entities (start and done: 0 and the result's entities).
        total: Rows to write (write), when known.
        result: The view's result (done).
    """

    view: str
    phase: Literal["start", "read", "write", "done"]
    rows: int = 0
    total: int | None = None
    result: ViewMaterialization | None = None


ProgressCallback = Callable[[MaterializeProgress], None]


def _ignore(event: MaterializeProgress) -> None:
    return None


@dataclass(frozen=True)
class _Column:
    """One column to read: where it comes from and what it becomes."""

    name: str  # name in the scanned table
    source: str  # column in the Parquet files
    kind: str  # "join key", "feature", "timestamp field", ...
    dtype: ValueType


@dataclass(frozen=True)
class _ViewJob:
    table: ViewTable
    start: datetime | None
    end: datetime
    dataset: ds.Dataset | None  # None when the window is empty
    projection: dict[str, ds.Expression]
    filter: ds.Expression | None
    key_names: list[str]
    has_created: bool
    # The files read, to name one that does not read.
    listing: Listing | None = None

    def reading(self) -> AbstractContextManager[None]:
        return reading_listed(self.table.view, self.listing)


def materialize_range(
    config: QuiverConfig,
    start: datetime,
    end: datetime,
    views: Sequence[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    profiles: ProfileWriter | None = None,
) -> list[ViewMaterialization]:
    """Materialize history with event time in ``[start, end)``.

    Each view's watermark then becomes `end`, unless it was already later.

    Args:
        config: The feature repo's configuration.
        start: Window start, inclusive (naive means UTC).
        end: Window end, exclusive (naive means UTC).
        views: Feature views to materialize; default every online view.
        progress: Called as each view progresses (see `MaterializeProgress`);
            nothing is reported by default. The CLI draws it.
        profiles: Where to store a profile of the rows each view writes
            (feature monitoring); None profiles nothing.

    Returns:
        One result per view, in order.

    Raises:
        InvalidArgumentError: `start` is not before `end`, or a named view is not online.
        NotFoundError: a named view does not exist.
        DefinitionError: a source lacks a column or has one of the wrong type.
        FailedPreconditionError: nothing applied yet, or a source path is missing.
        UnavailableError: the online store cannot be reached.
    """
    start, asked = _utc(start), _utc(end)
    end = _clamp_end(config, asked)
    if start >= end:
        capped = " (the clock plus serving.max_future_seconds)" if end < asked else ""
        raise InvalidArgumentError.for_field(
            "start",
            f"must be before end; got start={start.isoformat()}, end={end.isoformat()}{capped}",
        )
    registry = RegistryStore(config.registry_path)
    snapshot = registry.latest()
    tables = _select_views(snapshot, views)
    return _run(config, registry, [(t, start, end) for t in tables], progress, profiles)


def materialize_incremental(
    config: QuiverConfig,
    end: datetime,
    views: Sequence[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    profiles: ProfileWriter | None = None,
) -> list[ViewMaterialization]:
    """Materialize each view from where the last run stopped up to `end`.

    A view's window starts at its watermark; a view never materialized starts at
    ``end - ttl``, or at the beginning of its history when its ttl is 0. A view
    whose watermark is already at or past `end` is reported with zero rows.

    Args and raises as `materialize_range`.
    """
    end = _clamp_end(config, _utc(end))
    registry = RegistryStore(config.registry_path)
    snapshot = registry.latest()
    windows: list[tuple[ViewTable, datetime | None, datetime]] = []
    for table in _select_views(snapshot, views):
        start = snapshot.watermark(table.name)
        if start is None and table.view.ttl:
            start = end - table.view.ttl
        windows.append((table, start, end))
    return _run(config, registry, windows, progress, profiles)


def _select_views(snapshot: Snapshot, names: Sequence[str] | None) -> list[ViewTable]:
    if names is None:
        return [
            snapshot.view_table(name)
            for name, view in snapshot.feature_views.items()
            if view.online
        ]
    tables = []
    for name in dict.fromkeys(names):
        view = snapshot.feature_view(name)  # NotFoundError naming it
        if not view.online:
            raise InvalidArgumentError.for_field(
                "views", f"feature view {name!r} is not online (online=False); nothing to materialize"
            )
        tables.append(snapshot.view_table(name))
    return tables


def _run(
    config: QuiverConfig,
    registry: RegistryStore,
    windows: Sequence[tuple[ViewTable, datetime | None, datetime]],
    progress: ProgressCallback | None,
    profiles: ProfileWriter | None = None,
) -> list[ViewMaterialization]:
    report = progress or _ignore
    if config.offline_store.engine == "spark":
        from quiver_server.spark.materialize import run_on_spark

        return run_on_spark(config, registry, windows, report, profiles)
    # Check every source before writing anything.
    jobs = [_plan(config, table, start, end) for table, start, end in windows]
    results: list[ViewMaterialization] = []
    done: dict[str, datetime] = {}
    paths = GovernancePaths.of(config)
    store = open_online_store(config)
    try:
        for job in jobs:
            if job.dataset is None:
                results.append(ViewMaterialization(job.table.name, job.start, job.end, 0, 0, 0, 0, 0.0))
                continue
            report(MaterializeProgress(job.table.name, "start"))
            # Held shared while reading and writing: an erasure (exclusive) deletes
            # online rows only after this run wrote them, and a run that starts
            # after the request sees it pending and leaves its entities out.
            with locked(paths.view_lock(job.table.name), shared=True):
                erasing = PendingErasures(paths).filter_for(job.table.view)
                if erasing is not None:
                    job = replace(job, filter=erasing if job.filter is None else job.filter & erasing)
                outcome = _materialize_view(store, job, report, profiles)
            report(MaterializeProgress(job.table.name, "done", outcome.entities, result=outcome))
            results.append(outcome)
            done[job.table.name] = job.end
    finally:
        store.close()
        # One registry version per run (not per view), recording every view that
        # finished even if a later one failed.
        if done:
            _record_watermarks(registry, done, {j.table.name: j.table.generation for j in jobs})
            record_runs(GovernancePaths.of(config), [r for r in results if r.view in done])
    return results


# -- planning: columns, types, filter -------------------------------------------------


def _plan(
    config: QuiverConfig, table: ViewTable, start: datetime | None, end: datetime
) -> _ViewJob:
    view = table.view
    missing_bins = [f for f in view.feature_names if f not in table.bin_names]
    if missing_bins:
        raise FailedPreconditionError(
            f"feature view {view.name!r}: features {missing_bins} have no storage names in "
            f"the registry; run `quiver apply`"
        )
    if start is not None and start >= end:
        return _ViewJob(table, start, end, None, {}, None, [], False)
    location = resolve_path(config.offline_root, view.source.path)
    listing = list_files(location)
    with reading_listed(view, listing):
        dataset = view_dataset(config.offline_root, view)
        schema = dataset.schema
    source_of = {name: column for column, name in view.source.field_mapping.items()}
    columns = [
        _Column(k.name, source_of.get(k.name, k.name), "join key", k.dtype) for k in view.join_keys
    ] + [_Column(f.name, source_of.get(f.name, f.name), "feature", f.dtype) for f in view.schema]
    columns.append(_Column(EVENT_TS, view.source.timestamp_field, "timestamp field", ValueType.TIMESTAMP))
    created = view.source.created_timestamp_field
    if created:
        columns.append(_Column(CREATED_TS, created, "created timestamp field", ValueType.TIMESTAMP))

    projection: dict[str, ds.Expression] = {}
    for column in columns:
        found = _source_type(view, location, schema, column)
        projection[column.name] = _convert(ds.field(column.source), found, column.dtype)

    event_type = schema.field(view.source.timestamp_field).type
    event = ds.field(view.source.timestamp_field)
    condition = event < _bound(end, event_type)
    if start is not None:
        condition = (event >= _bound(start, event_type)) & condition
    for key in view.join_keys:
        # A row without its entity key cannot be stored; skip it.
        condition = condition & ds.field(source_of.get(key.name, key.name)).is_valid()
    return _ViewJob(
        table, start, end, dataset, projection, condition, view.join_key_names, bool(created),
        listing,
    )


def _source_type(
    view: FeatureView, location: str, schema: pa.Schema, column: _Column
) -> pa.DataType:
    what = f"{column.kind} {column.name!r}" if column.kind in ("join key", "feature") else column.kind
    expected = column.dtype.name.lower()
    index = schema.get_field_index(column.source)
    if index < 0:
        raise DefinitionError(
            f"feature view {view.name!r}: source {location!r} has no column {column.source!r} "
            f"for {what} (expected {expected}); it has: {', '.join(schema.names)}"
        )
    found: pa.DataType = schema.field(index).type
    if not compatible(column.dtype, found):
        raise DefinitionError(
            f"feature view {view.name!r}: column {column.source!r} of source {location!r} "
            f"({what}) has type {found}, expected {expected}"
        )
    return found


def _convert(field: ds.Expression, found: pa.DataType, dtype: ValueType) -> ds.Expression:
    """An expression turning the source column into what the store receives."""
    if dtype == ValueType.TIMESTAMP:
        # Int microseconds since the epoch, UTC: tz-aware values are stored as UTC
        # already and naive ones are taken as UTC, so only the unit changes.
        as_micros = field.cast(
            options=pc.CastOptions(pa.timestamp("us", tz=found.tz), allow_time_truncate=True)
        )
        return as_micros.cast(pa.int64())
    return field if found == dtype.arrow_type else field.cast(options=cast_options(dtype, found))


def _bound(value: datetime, column_type: pa.DataType) -> pa.Scalar:
    """`value` as a scalar of the column's own type, so Parquet statistics prune.

    Rounded up to the column's unit: for an integer count c, ``c >= x`` and
    ``c < x`` are the same as comparing with ceil(x).
    """
    us = micros(value)
    if column_type.unit == "ns":
        # Nanoseconds reach 1677..2262 only; a bound past that is the column's own end.
        ticks = min(max(us * 1_000, _INT64_MIN), _INT64_MAX)
    else:
        per_tick = {"s": 1_000_000, "ms": 1_000, "us": 1}[column_type.unit]
        ticks = -(-us // per_tick)
    return pa.scalar(ticks, type=column_type)


# -- running -----------------------------------------------------------------------


def _materialize_view(
    store: OnlineStore, job: _ViewJob, report: ProgressCallback,
    profiles: ProfileWriter | None = None,
) -> ViewMaterialization:
    began = time.perf_counter()
    name = job.table.name
    assert job.dataset is not None
    scanner = job.dataset.scanner(columns=job.projection, filter=job.filter)
    latest: pa.Table | None = None
    pending: list[pa.RecordBatch] = []
    pending_rows = rows_read = 0
    try:
        with job.reading():
            for batch in scanner.to_reader():
                if not batch.num_rows:
                    continue
                pending.append(batch)
                pending_rows += batch.num_rows
                rows_read += batch.num_rows
                report(MaterializeProgress(name, "read", rows_read))
                if pending_rows >= max(COMPACT_ROWS, latest.num_rows if latest else 0):
                    latest = _latest_per_key(_concat(latest, pending, scanner), job)
                    pending, pending_rows = [], 0
        latest = _latest_per_key(_concat(latest, pending, scanner), job)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DefinitionError(
            f"feature view {name!r}: its history does not match the definition: {exc}"
        ) from exc
    except OSError as exc:
        raise FailedPreconditionError(f"feature view {name!r}: cannot read its history: {exc}") from exc

    if profiles is not None and latest.num_rows:
        # The profile of what is written online: each entity's latest row.
        first = datetime(1970, 1, 1, tzinfo=UTC) + _min_micros(latest)
        profiles.record(job.table.view, "materialize", latest, job.start or first, job.end,
                        event_column=EVENT_TS)
    written = superseded = 0
    entities = latest.num_rows
    for offset in range(0, entities, WRITE_CHUNK_ROWS):
        chunk = latest.slice(offset, WRITE_CHUNK_ROWS)
        result = store.write(job.table, _write_batch(job, chunk))
        written += result.rows - result.superseded
        superseded += result.superseded
        report(MaterializeProgress(name, "write", offset + chunk.num_rows, entities))
    seconds = time.perf_counter() - began
    return ViewMaterialization(
        name, job.start, job.end, rows_read, entities, written, superseded, seconds
    )


def _concat(latest: pa.Table | None, batches: list[pa.RecordBatch], scanner: ds.Scanner) -> pa.Table:
    tables = [latest] if latest is not None else []
    tables.append(pa.Table.from_batches(batches, schema=scanner.projected_schema))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _latest_per_key(table: pa.Table, job: _ViewJob) -> pa.Table:
    """Each entity's latest row, ordered by key.

    A stable sort by (keys, event, created) puts every entity's winner last
    among its rows; among rows equal in all three, the one read last wins.
    """
    n = table.num_rows
    if n <= 1:
        return table
    order = [(k, "ascending", "at_end") for k in job.key_names]
    order.append((EVENT_TS, "ascending", "at_end"))
    if job.has_created:
        # Rows without a created timestamp lose ties to rows with one.
        order.append((CREATED_TS, "ascending", "at_start"))
    indices = pc.sort_indices(table, sort_keys=order)
    last: pa.Array | None = None
    for key in job.key_names:
        column = table.column(key).take(indices).combine_chunks()
        differs = pc.not_equal(column.slice(1), column.slice(0, n - 1))
        last = differs if last is None else pc.or_(last, differs)
    assert last is not None
    is_last = pa.concat_arrays([last, pa.array([True])])
    return table.take(indices.filter(is_last))


def _write_batch(job: _ViewJob, chunk: pa.Table) -> WriteBatch:
    view = job.table.view
    n = chunk.num_rows
    keys = encode_keys(view.join_keys, [chunk.column(k).to_pylist() for k in job.key_names])
    created = (
        chunk.column(CREATED_TS).fill_null(0).to_pylist() if job.has_created else [0] * n
    )
    return WriteBatch(
        keys=keys,
        event_ts=chunk.column(EVENT_TS).to_pylist(),
        created_ts=created,
        features={f: chunk.column(f).to_pylist() for f in view.feature_names},
    )


def _record_watermarks(
    registry: RegistryStore, ends: dict[str, datetime], generations: dict[str, int]
) -> None:
    """Advance the views' watermarks to `ends`, for views still at the history
    version (`generations`, 0 for ready-made history) the run wrote."""
    now = datetime.now(UTC)

    def change(proto: pb.Registry) -> str | None:
        present = {v.name for v in proto.feature_views}
        changed = False
        for view, end in ends.items():
            if view not in present:
                continue  # removed by an apply while we ran
            if proto.view_meta[view].history.version != generations[view]:
                # A backfill switched the view to a new version (its own online
                # storage and watermark) while this run wrote the one it replaced.
                continue
            state = proto.view_meta[view].materialization
            if not state.HasField("watermark") or state.watermark.ToDatetime(tzinfo=UTC) < end:
                state.watermark.FromDatetime(end)
            state.updated_at.FromDatetime(now)
            changed = True
        return "materialize" if changed else None

    registry.commit(change)


# -- small helpers -----------------------------------------------------------------


def _clamp_end(config: QuiverConfig, end: datetime) -> datetime:
    """Windows end at the clock plus the allowed skew at the latest.

    History rows further in the future are not materialized yet (a later run
    picks them up once they are due), so one bad row cannot pin a value online,
    and a watermark never runs ahead of the clock, where it would make the next
    incremental run skip rows that arrive meanwhile.
    """
    return min(end, latest_allowed(datetime.now(UTC), config.serving.max_future_seconds))


def _min_micros(table: pa.Table) -> timedelta:
    return timedelta(microseconds=int(pc.min(table.column(EVENT_TS)).as_py()))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


