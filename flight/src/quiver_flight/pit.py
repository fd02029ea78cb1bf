"""The point-in-time join: a spine joined with feature views' Parquet history.

Semantics (DESIGN.md, Feast's rules): for each spine row with join keys K and
timestamp t, and each feature view V with ttl T (0 = unlimited), the features
come from the V row with the same K whose event time e satisfies ``e <= t`` and
``(T == 0 or e >= t - T)``; among several, the greatest e, then the greatest
created timestamp, then -- where Feast leaves it undefined -- the row that comes
last in the source (files sorted by path, rows in file order), so the result is
deterministic. A null created timestamp loses to any other. With no such row
the view's features are null. There is one output row per spine row
(duplicates kept), in spine order, with the spine's columns unchanged.

Timestamps: the spine's timestamp column must be an Arrow timestamp with a
time zone; naive spine timestamps are refused with an error rather than
guessed to be UTC (guessing wrong leaks future rows). History timestamps
without a time zone are read as UTC, as `ParquetSource` documents.

How: each view's history is indexed once (see `quiver_flight.history`) and
cached; a spine is then processed batch by batch -- vectorized binary search
for the matching row numbers, then a gather of the feature values -- so memory
does not grow with the size of the training set. When a view's feature
columns do not fit the cache budget, they are instead gathered in one ordered
scan of the history per call, and that call's output is held until sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from quiver import FeatureView, Field
from quiver.convert import DEFAULT_TIMESTAMP_COLUMN
from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver_flight.cache import ByteBudgetCache
from quiver_flight.features import FeatureBlock
from quiver_flight.history import (
    HistoryIndex,
    HistorySource,
    build_index,
    cast_feature,
    check_source_schema,
    locate,
)
from quiver_flight.keys import IntArray, normalize_key, spine_key_accepts, spine_key_types
from quiver_flight.timestamps import TimestampRangeError, per_second, to_units
from quiver_server.registry.snapshot import FeatureRef
from quiver_server.telemetry.spans import traced

FEATURE_REF_METADATA = b"quiver.feature_ref"


class Exclusions(Protocol):
    """Entity keys a view's history must not yield (pending erasures)."""

    def for_view(self, view: FeatureView) -> tuple[list[tuple[Any, ...]], str]:
        """Keys in join key order, and a tag naming them for fingerprints."""
        ...
DEFAULT_BATCH_ROWS = 65_536


def group_by_view(refs: Sequence[FeatureRef]) -> list[tuple[FeatureView, list[FeatureRef]]]:
    """The views of `refs`, in first-use order, each with its refs."""
    groups: dict[str, tuple[FeatureView, list[FeatureRef]]] = {}
    for ref in refs:
        groups.setdefault(ref.view.name, (ref.view, []))[1].append(ref)
    return list(groups.values())


def check_spine_schema(
    schema: pa.Schema, views: Sequence[FeatureView], timestamp_column: str
) -> None:
    """Check the spine's columns against the views' join keys and the time column.

    Raises:
        InvalidArgumentError: naming the spine column and what is expected.
    """
    names = schema.names
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidArgumentError.for_field(
            "spine", f"column names must be unique; repeated: {', '.join(twice)}",
            reason="SPINE_DUPLICATE_COLUMN",
        )
    check_timestamp_column(schema, timestamp_column)
    for view in views:
        for key in view.join_keys:
            index = schema.get_field_index(key.name)
            if index < 0:
                raise InvalidArgumentError.for_field(
                    f"spine.{key.name}",
                    f"the spine has no column {key.name!r}, a join key of feature view "
                    f"{view.name!r}; spine columns: {', '.join(names)}",
                    reason="SPINE_MISSING_JOIN_KEY",
                    metadata={"column": key.name, "feature_view": view.name},
                )
            arrow_type = schema.field(index).type
            if not spine_key_accepts(key.dtype, arrow_type):
                raise InvalidArgumentError.for_field(
                    f"spine.{key.name}",
                    f"spine column {key.name!r} is {arrow_type}, but join key {key.name!r} of "
                    f"feature view {view.name!r} is {key.dtype.name.lower()}; allowed spine "
                    f"types: {spine_key_types(key.dtype)} (cast the column before sending)",
                    reason="SPINE_KEY_TYPE",
                    metadata={"column": key.name, "feature_view": view.name,
                              "type": str(arrow_type)},
                )


def check_timestamp_column(schema: pa.Schema, timestamp_column: str) -> None:
    """The spine's time column must exist and be a timestamp with a time zone."""
    index = schema.get_field_index(timestamp_column)
    where = f"spine.{timestamp_column}"
    if index < 0:
        raise InvalidArgumentError.for_field(
            where,
            f"the spine has no timestamp column {timestamp_column!r} (set timestamp_column to "
            f"name it); spine columns: {', '.join(schema.names)}",
            reason="SPINE_MISSING_TIMESTAMP",
            metadata={"column": timestamp_column},
        )
    arrow_type = schema.field(index).type
    if not pa.types.is_timestamp(arrow_type):
        raise InvalidArgumentError.for_field(
            where,
            f"spine column {timestamp_column!r} is {arrow_type}; it must be a timestamp with a "
            f"time zone, e.g. timestamp[us, tz=UTC] (parse strings before sending)",
            reason="SPINE_TIMESTAMP_TYPE",
            metadata={"column": timestamp_column},
        )
    if arrow_type.tz is None:
        raise InvalidArgumentError.for_field(
            where,
            f"spine column {timestamp_column!r} holds naive timestamps ({arrow_type}); Quiver "
            f"does not guess a time zone: make them UTC instants, e.g. pandas "
            f"`col.dt.tz_localize('UTC')` or pyarrow `pc.assume_timezone(col, 'UTC')`",
            reason="NAIVE_TIMESTAMP",
            metadata={"column": timestamp_column},
        )


def output_schema(
    spine_schema: pa.Schema,
    refs: Sequence[FeatureRef],
    *,
    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
    full_feature_names: bool = False,
) -> pa.Schema:
    """The training set's schema: the spine's columns, then one per feature.

    Dictionary-encoded spine columns come back decoded: record batches streamed
    one at a time carry no dictionaries (and each batch may have its own).

    Raises:
        InvalidArgumentError: the spine does not fit the features, or two output
            columns would share a name.
    """
    check_spine_schema(spine_schema, [view for view, _ in group_by_view(refs)], timestamp_column)
    spine_fields = [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                    for f in spine_schema]
    return pa.schema([*spine_fields, *feature_fields(refs, full_feature_names, spine_schema.names)])


def feature_fields(
    refs: Sequence[FeatureRef], full_feature_names: bool, taken: Sequence[str] = ()
) -> list[pa.Field]:
    """One Arrow field per feature, named and typed as the output carries it."""
    fields = []
    owners: dict[str, str] = {}
    for i, ref in enumerate(refs):
        name = ref.output_name(full_feature_names)
        if name in taken:
            raise InvalidArgumentError.for_field(
                f"features[{i}]",
                f"feature {ref.ref!r} would be column {name!r}, which the spine already has; "
                f"rename the spine column or set full_feature_names",
                reason="OUTPUT_COLUMN_COLLISION",
            )
        if name in owners:
            raise InvalidArgumentError.for_field(
                f"features[{i}]",
                f"features {owners[name]!r} and {ref.ref!r} would both be column {name!r}; "
                f"set full_feature_names to name columns 'view__feature'",
                reason="OUTPUT_COLUMN_COLLISION",
            )
        owners[name] = ref.ref
        fields.append(
            pa.field(name, ref.feature.dtype.arrow_type, metadata={FEATURE_REF_METADATA: ref.ref})
        )
    return fields


@dataclass
class _ViewJoin:
    """One view's part of a join: its index, and where its features come from."""

    features: list[Field]
    source: HistorySource
    index: HistoryIndex
    ttl: int
    kid: IntArray
    # The features laid out for random access (cached), or None when they
    # are gathered by one scan of the history into `gathered`.
    block: FeatureBlock | None
    gathered: list[pa.Array] = field(default_factory=list)

    def arrays(self, start: int, stop: int, t_hi: IntArray, t_lo: IntArray) -> list[pa.Array]:
        if self.block is None:
            return [a.slice(start, stop - start) for a in self.gathered]
        pos = self.index.match(self.kid[start:stop], t_hi[start:stop], t_lo[start:stop], self.ttl)
        return self.block.gather(pos)


class PointInTimeEngine:
    """Point-in-time joins over the offline store, with a cache of history indexes.

    Args:
        offline_root: Base of relative source paths.
        cache_bytes: Budget for cached history indexes and feature columns.
        batch_rows: Rows per output record batch.
    """

    def __init__(
        self,
        offline_root: str,
        *,
        cache_bytes: int = 4 << 30,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        exclusions: Exclusions | None = None,
    ) -> None:
        self.offline_root = offline_root
        self.batch_rows = batch_rows
        self.cache: ByteBudgetCache[object] = ByteBudgetCache(cache_bytes)
        self.exclusions = exclusions

    def locate(self, views: Sequence[FeatureView]) -> dict[str, HistorySource]:
        """List the history files of `views` (their fingerprints name this state).

        Entities of erasures still in progress are left out of every view they
        were erased from, so a join never sees them once erasure was requested.
        """
        sources = {}
        for view in views:
            excluded, tag = self.exclusions.for_view(view) if self.exclusions else ([], "")
            sources[view.name] = locate(self.offline_root, view, excluded, tag)
        return sources

    def check_sources(self, refs: Sequence[FeatureRef], sources: Mapping[str, HistorySource]) -> None:
        """Check that every view's history has the columns the refs need."""
        for view, view_refs in group_by_view(refs):
            check_source_schema(sources[view.name], [r.feature for r in view_refs])

    def join(
        self,
        spine: pa.Table,
        refs: Sequence[FeatureRef],
        *,
        timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
        full_feature_names: bool = False,
        sources: Mapping[str, HistorySource] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Join `spine` with `refs`: record batches in spine order, computed as they are read.

        Everything that can fail on bad input is checked before this returns.

        Args:
            spine: The labelled events; any columns, in any order.
            refs: Resolved features, in output order.
            timestamp_column: The spine's event-time column.
            full_feature_names: Name columns "view__feature".
            sources: History listings to use (from `locate`); listed now if None.

        Raises:
            InvalidArgumentError: the spine does not fit the features.
            FailedPreconditionError: a view's history is missing or malformed.
        """
        schema = output_schema(
            spine.schema, refs, timestamp_column=timestamp_column,
            full_feature_names=full_feature_names,
        )
        groups = group_by_view(refs)
        if sources is None:
            sources = self.locate([view for view, _ in groups])
        times = spine[timestamp_column]
        if times.null_count:
            raise InvalidArgumentError.for_field(
                f"spine.{timestamp_column}",
                f"{times.null_count} rows have no timestamp; every spine row needs one",
                reason="SPINE_NULL_TIMESTAMP",
            )
        self.check_sources(refs, sources)
        # Views are prepared side by side: building an index, or encoding the
        # spine's keys, is mostly numpy and Arrow work that releases the GIL.
        with ThreadPoolExecutor(max(1, len(groups)), thread_name_prefix="quiver-prepare") as pool:
            joins = list(pool.map(
                lambda group: self._prepare(
                    group[0], [r.feature for r in group[1]], sources[group[0].name], spine
                ),
                groups,
            ))
        bounds: dict[str, tuple[IntArray, IntArray]] = {}
        for join in joins:
            unit = join.index.unit
            if unit not in bounds:
                try:
                    bounds[unit] = (to_units(times, unit), to_units(times, unit, ceil=True))
                except TimestampRangeError as exc:
                    raise InvalidArgumentError.for_field(
                        f"spine.{timestamp_column}", str(exc), reason="SPINE_TIMESTAMP_RANGE"
                    ) from None
            if join.block is None:
                join.gathered = self._gather_scan(join, *bounds[unit])
        return self._batches(spine, schema, joins, bounds)

    @traced("quiver.flight.point_in_time_join")
    def _batches(
        self, spine: pa.Table, schema: pa.Schema, joins: list[_ViewJoin],
        bounds: dict[str, tuple[IntArray, IntArray]],
    ) -> Iterator[pa.RecordBatch]:
        # Batches follow the spine's own chunks (at most `batch_rows`), so spine
        # columns pass through without a copy even when a partition starts
        # inside a stored batch.
        start = 0
        for piece in spine.to_batches(max_chunksize=self.batch_rows):
            stop = start + piece.num_rows
            arrays = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c
                      for c in piece.columns]
            # Views are joined one after another: batches are too small for
            # threads to win against the GIL hand-offs between numpy calls;
            # parallelism comes from serving several partitions at once.
            for join in joins:
                arrays.extend(join.arrays(start, stop, *bounds[join.index.unit]))
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
            start = stop

    def join_table(
        self,
        spine: pa.Table,
        refs: Sequence[FeatureRef],
        *,
        timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
        full_feature_names: bool = False,
    ) -> pa.Table:
        """`join`, collected into one table (tests and small spines)."""
        schema = output_schema(spine.schema, refs, timestamp_column=timestamp_column,
                               full_feature_names=full_feature_names)
        batches = self.join(spine, refs, timestamp_column=timestamp_column,
                            full_feature_names=full_feature_names)
        return pa.Table.from_batches(list(batches), schema=schema)

    def _prepare(
        self, view: FeatureView, features: list[Field], source: HistorySource, spine: pa.Table
    ) -> _ViewJoin:
        index = self._index(source)
        keys = []
        for key in view.join_keys:
            normalized = normalize_key(spine[key.name], key.dtype)
            assert normalized is not None, "checked by check_spine_schema"
            keys.append(normalized)
        kid = index.encoder.encode(keys)
        ttl = view.ttl_seconds * per_second(index.unit)
        return _ViewJoin(features, source, index, ttl, kid, self._block(source, index, features))

    def _index(self, source: HistorySource) -> HistoryIndex:
        def build() -> tuple[object, int]:
            with _unchanged(source):
                index = build_index(source)
            return index, index.nbytes

        index = self.cache.get_or_build(("index", _view_key(source.view), source.fingerprint), build)
        assert isinstance(index, HistoryIndex)
        return index

    def _block(
        self, source: HistorySource, index: HistoryIndex, features: list[Field]
    ) -> FeatureBlock | None:
        if index.nbytes + FeatureBlock.estimate(features, index.entries) > self.cache.max_bytes:
            return None

        def build() -> tuple[object, int]:
            columns = (self._read_column(source, f, index.num_rows) for f in features)
            with _unchanged(source):
                block = FeatureBlock.build(features, columns, index.rowid)
            return block, block.nbytes

        key = ("block", _view_key(source.view), source.fingerprint,
               tuple((f.name, f.dtype) for f in features))
        block = self.cache.get_or_build(key, build)
        assert isinstance(block, FeatureBlock)
        return block

    def _read_column(self, source: HistorySource, feature: Field, num_rows: int) -> pa.ChunkedArray:
        """A feature's history column, in history row order, as declared.

        Columns are read one at a time: Parquet is columnar, so this reads the
        same bytes as reading them together, and holds only one in memory.
        """
        dataset = source.dataset
        if dataset is None:
            return pa.chunked_array([], type=feature.dtype.arrow_type)
        column = source.source_column(feature.name)
        with source.reading():
            table = dataset.to_table(columns=[column])
        if table.num_rows != num_rows:
            raise _changed(source)
        return cast_feature(table[column], feature, source)

    def _gather_scan(self, join: _ViewJoin, t_hi: IntArray, t_lo: IntArray) -> list[pa.Array]:
        """The features of every spine row, read in one ordered pass over the history."""
        rowid = join.index.rows(join.index.match(join.kid, t_hi, t_lo, join.ttl))
        at = np.flatnonzero(rowid >= 0)
        order = np.argsort(rowid[at], kind="stable")
        wanted = rowid[at][order]
        source, features = join.source, join.features
        columns = list(dict.fromkeys(source.source_column(f.name) for f in features))
        dataset = source.dataset
        pieces: list[pa.RecordBatch] = []
        start = 0
        if dataset is not None and len(wanted):
            with _unchanged(source), source.reading():
                for batch in dataset.to_batches(columns=columns):
                    stop = start + batch.num_rows
                    lo, hi = np.searchsorted(wanted, [start, stop], side="left")
                    if hi > lo:
                        pieces.append(batch.take(pa.array(wanted[lo:hi] - start)))
                    start = stop
                    if hi == len(wanted):
                        break
        gathered = sum(p.num_rows for p in pieces)
        if gathered != len(wanted):
            raise _changed(source)
        place = np.full(len(rowid), -1, np.int64)
        place[at[order]] = np.arange(len(at), dtype=np.int64)
        indices = pa.array(place, mask=place < 0)
        result = []
        for f in features:
            column = source.source_column(f.name)
            values = [p.column(column) for p in pieces]
            array = pa.concat_arrays(values) if values else pa.nulls(0, type=f.dtype.arrow_type)
            result.append(cast_feature(array, f, source).take(indices))
        return result


def _view_key(view: FeatureView) -> tuple[object, ...]:
    """What a view's index depends on besides its files."""
    source = view.source
    return (
        view.name, source.path, source.timestamp_field, source.created_timestamp_field,
        tuple(sorted(source.field_mapping.items())),
        tuple((k.name, k.dtype) for k in view.join_keys),
    )


@contextmanager
def _unchanged(source: HistorySource) -> Iterator[None]:
    """Read `source` inside this: files rewritten or replaced meanwhile (an erasure,
    a compaction) make it HISTORY_CHANGED rather than rows matched against another
    state of the files -- row numbers shift when a file loses rows -- or a failed
    read of a file swapped under an open dataset reported as a store fault."""
    try:
        yield
    except (pa.ArrowException, OSError, FailedPreconditionError):
        if source.changed():
            raise _changed(source) from None
        raise
    if source.changed():
        raise _changed(source)


def _changed(source: HistorySource) -> Exception:
    return FailedPreconditionError(
        f"{source.describe()} changed while it was read; retry",
        reason="HISTORY_CHANGED",
        metadata={"feature_view": source.view.name},
    )
