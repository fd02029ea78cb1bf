"""A feature view's Parquet history: where it is, and the index the join searches.

The index holds, for every (join key, event time) of the history, the one row
that wins it (greatest created timestamp, then the row that comes last in the
source), sorted so that a vectorized binary search finds, for any spine row,
the latest row of its key at or before its time. It is built from the key and
time columns only; feature columns are read separately, and only those asked
for.

Row numbers refer to the history in a fixed order: files sorted by path, rows
in file order. A fingerprint of the file listing (paths, sizes, modification
times) names that state, so cached indexes and tickets notice any change.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from quiver import FeatureView, Field
from quiver.errors import FailedPreconditionError
from quiver.types import ValueType
from quiver_flight.keys import IntArray, KeyEncoder, normalize_key
from quiver_flight.timestamps import TimestampRangeError, comparison_unit, to_units
from quiver_server.offline.columns import cast_column, compatible
from quiver_server.offline.source import Listing, list_files, reading_history, resolve_path

_INT64_MIN = int(np.iinfo(np.int64).min)
# Sorting packs (key id, event time) into one non-negative int64; when the raw
# time span does not fit next to the key ids, times are replaced by their ranks.
MAX_COMPOSITE_BITS = 62
# The hard limit of the rank fallback (tests lower MAX_COMPOSITE_BITS to force it).
_INT64_BITS = 62


@dataclass(frozen=True)
class HistorySource:
    """The files holding one view's history, as listed at one moment."""

    view: FeatureView
    location: str
    filesystem: pafs.FileSystem
    base: str
    is_directory: bool
    files: tuple[str, ...]
    fingerprint: str
    # Entity keys (in join key order) left out of the index: erasures requested
    # but not yet carried out. The fingerprint names them too.
    excluded: tuple[tuple[object, ...], ...] = ()
    # The fingerprint of the files alone (paths, sizes, modification times) as
    # listed; empty: not checked.
    listed: str = ""

    def changed(self) -> bool:
        """Whether a file was rewritten, replaced or removed since it was listed."""
        if not self.listed:
            return False
        infos = self.filesystem.get_file_info(list(self.files)) if self.files else []
        now = Listing(self.filesystem, self.base, self.is_directory, tuple(infos)).fingerprint
        return now != self.listed

    def source_column(self, name: str) -> str:
        """The source column that holds join key or feature `name`."""
        for source, target in self.view.source.field_mapping.items():
            if target == name:
                return source
        return name

    @functools.cached_property
    def dataset(self) -> ds.Dataset | None:
        """The files as one dataset (built once), or None when there are none yet."""
        if not self.files:
            return None
        return ds.dataset(
            list(self.files),
            filesystem=self.filesystem,
            format="parquet",
            partitioning="hive",
            partition_base_dir=self.base if self.is_directory else None,
        )

    def schema(self) -> pa.Schema | None:
        with self.reading():
            dataset = self.dataset
            return None if dataset is None else dataset.schema

    def reading(self) -> AbstractContextManager[None]:
        """Read the files inside this: one that does not read is named (FAILED_PRECONDITION)."""
        return reading_history(self.view, self.filesystem, self.base, self.is_directory, self.files)

    def describe(self) -> str:
        return f"feature view {self.view.name!r} (source {self.location!r})"


def locate(
    offline_root: str,
    view: FeatureView,
    excluded: Sequence[tuple[object, ...]] = (),
    exclusion_tag: str = "",
) -> HistorySource:
    """List the files of `view`'s history.

    Args:
        offline_root: Base of relative source paths.
        view: The feature view.
        excluded: Entity keys whose rows the join must not see.
        exclusion_tag: Names `excluded` in the fingerprint (erasure ids).

    Raises:
        FailedPreconditionError: the source path does not exist.
    """
    location = resolve_path(offline_root, view.source.path)
    listing = list_files(location)
    if listing is None:
        raise FailedPreconditionError(
            f"feature view {view.name!r}: source {location!r} does not exist",
            reason="SOURCE_NOT_FOUND",
            metadata={"feature_view": view.name},
        )
    return HistorySource(
        view=view,
        location=location,
        filesystem=listing.filesystem,
        base=listing.base,
        is_directory=listing.is_directory,
        files=tuple(i.path for i in listing.files),
        fingerprint=with_exclusions(listing.fingerprint, exclusion_tag),
        excluded=tuple(excluded),
        listed=listing.fingerprint,
    )


def with_exclusions(fingerprint: str, exclusion_tag: str) -> str:
    """A history fingerprint that also changes with the entities left out."""
    return f"{fingerprint}-x{exclusion_tag}" if exclusion_tag else fingerprint


def check_source_schema(source: HistorySource, features: list[Field]) -> None:
    """Check that the history has the key, time and feature columns, typed right.

    Raises:
        FailedPreconditionError: naming the view, the column and what is wrong.
    """
    schema = source.schema()
    if schema is None:
        return
    view = source.view
    wanted: list[tuple[str, str, ValueType | None]] = [
        (key.name, "join key", key.dtype) for key in view.join_keys
    ]
    wanted.append((view.source.timestamp_field, "timestamp field", None))
    if view.source.created_timestamp_field:
        wanted.append((view.source.created_timestamp_field, "created timestamp field", None))
    wanted.extend((f.name, "feature", f.dtype) for f in features)
    for name, role, value_type in wanted:
        column = source.source_column(name) if value_type is not None else name
        index = schema.get_field_index(column)
        if index < 0:
            raise FailedPreconditionError(
                f"{source.describe()} has no column {column!r} for its {role} {name!r}; "
                f"it has: {', '.join(schema.names)}",
                reason="SOURCE_SCHEMA",
                metadata={"feature_view": view.name, "column": column},
            )
        arrow_type = schema.field(index).type
        if value_type is None:
            ok = pa.types.is_timestamp(arrow_type)
            expected = "a timestamp"
        else:
            ok = compatible(value_type, arrow_type)
            expected = value_type.name.lower()
        if not ok:
            raise FailedPreconditionError(
                f"{source.describe()}: column {column!r} ({role} {name!r}) is {arrow_type}, "
                f"expected {expected}",
                reason="SOURCE_SCHEMA",
                metadata={"feature_view": view.name, "column": column},
            )


def cast_feature(
    values: pa.Array | pa.ChunkedArray, feature: Field, source: HistorySource
) -> pa.Array | pa.ChunkedArray:
    """A history column as the declared Arrow type of `feature` (naive times read as UTC)."""
    try:
        return cast_column(values, feature.dtype)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FailedPreconditionError(
            f"{source.describe()}: feature {feature.name!r} holds values that do not fit "
            f"{feature.dtype.name.lower()}: {exc}",
            reason="SOURCE_VALUES",
            metadata={"feature_view": source.view.name, "feature": feature.name},
        ) from None


@dataclass(frozen=True)
class HistoryIndex:
    """The winning row of every (key, event time), grouped by key, sorted by time.

    Entry ``i`` is the row ``rowid[i]`` with event time ``events[i]``; the
    entries of key id ``k`` are ``starts[k]:starts[k + 1]``.
    """

    encoder: KeyEncoder
    starts: IntArray
    events: IntArray
    rowid: IntArray
    unit: str
    num_rows: int

    @property
    def entries(self) -> int:
        return len(self.events)

    @property
    def nbytes(self) -> int:
        return self.encoder.nbytes + int(self.starts.nbytes + self.events.nbytes + self.rowid.nbytes)

    def match(self, kid: IntArray, t_hi: IntArray, t_lo: IntArray, ttl: int) -> IntArray:
        """For each query, the entry holding its point-in-time row, or -1.

        A vectorized binary search within each key's entries: every step is
        one gather over all queries, so memory latency overlaps instead of
        adding up as it does in a scalar binary search.

        Args:
            kid: Key ids from `encoder` (-1: unknown key).
            t_hi: Query times rounded down, in `unit`.
            t_lo: Query times rounded up, in `unit` (for the ttl bound).
            ttl: The view's ttl in `unit`; 0 means unlimited.
        """
        if len(kid) == 0 or self.entries == 0:
            return np.full(len(kid), -1, np.int64)
        known = kid >= 0
        k = np.where(known, kid, 0)
        base = self.starts[k]
        size = np.where(known, self.starts[k + 1] - base, 0)
        # Branch-free search for the last event <= t in [base, base + size):
        # halve `size` each step, moving `base` up when the midpoint qualifies.
        # Groups of size 0 or 1 stand still, so no masks are needed.
        steps = int(size.max()).bit_length()
        for _ in range(steps):
            half = size >> 1
            middle = base + half
            base = np.where(self.events[middle] <= t_hi, middle, base)
            size -= half
        last_entry = self.entries - 1
        event = self.events[np.minimum(base, last_entry)]
        ok = (size > 0) & (event <= t_hi)
        if ttl > 0:
            ok &= event >= np.maximum(t_lo, _INT64_MIN + ttl) - ttl
        return np.where(ok, base, -1)

    def rows(self, pos: IntArray) -> IntArray:
        """History row numbers of entries `pos` (-1 stays -1)."""
        if self.entries == 0:
            return np.full(len(pos), -1, np.int64)
        return np.where(pos >= 0, self.rowid[np.maximum(pos, 0)], -1)


def build_index(source: HistorySource) -> HistoryIndex:
    """Read the key and time columns of the history and index them.

    Rows with a null key or a null event time can never match and are left
    out. A null created timestamp loses to any non-null one.
    """
    view = source.view
    key_columns = [source.source_column(k.name) for k in view.join_keys]
    ts_column = view.source.timestamp_field
    created_column = view.source.created_timestamp_field
    dataset = source.dataset
    if dataset is None:
        empty = KeyEncoder.build(
            [normalize_key(pa.array([], k.dtype.arrow_type), k.dtype) for k in view.join_keys]
        )[0]
        nothing = np.empty(0, np.int64)
        return HistoryIndex(empty, np.zeros(1, np.int64), nothing, nothing, "us", 0)
    check_source_schema(source, [])
    columns = [*key_columns, ts_column, *([created_column] if created_column else [])]
    with source.reading():
        table = dataset.to_table(columns=list(dict.fromkeys(columns)))
    num_rows = table.num_rows
    unit = comparison_unit(table.schema.field(ts_column).type)

    keys = []
    for key, column in zip(view.join_keys, key_columns, strict=True):
        normalized = normalize_key(table[column], key.dtype)
        assert normalized is not None, "checked by check_source_schema"
        keys.append(normalized)
    valid = np.ones(num_rows, dtype=bool)
    for array in [*keys, table[ts_column]]:
        if array.null_count:
            valid &= array.is_valid().to_numpy(zero_copy_only=False)
    if source.excluded:
        valid &= ~_excluded_rows(table, key_columns, source.excluded)
    try:
        event = to_units(table[ts_column], unit)
        # Created times are only compared with each other: keep their own
        # precision, or sub-microsecond differences would tie.
        created = (
            to_units(table[created_column], comparison_unit(table[created_column].type))
            if created_column else np.zeros(num_rows, np.int64)
        )
    except TimestampRangeError as exc:
        raise FailedPreconditionError(
            f"{source.describe()}: {exc}", reason="SOURCE_VALUES",
            metadata={"feature_view": view.name},
        ) from None
    if created_column and table[created_column].null_count:
        nulls = ~table[created_column].is_valid().to_numpy(zero_copy_only=False)
        created = np.where(nulls, _INT64_MIN, created)
    del table

    rows: IntArray = np.arange(num_rows, dtype=np.int64)
    if not valid.all():
        rows = np.flatnonzero(valid).astype(np.int64)
        keys = [k.take(pa.array(rows)) for k in keys]
        event, created = event[rows], created[rows]
    encoder, kid = KeyEncoder.build(keys)
    del keys
    comp, bits = _composite(kid, event, encoder.size)
    del kid
    # One fast sort of packed (key, time) words instead of a multi-key sort.
    order = np.argsort(comp)
    comp = comp[order]
    comp, order = _keep_winners(comp, order, created)
    counts = np.bincount(comp >> bits, minlength=encoder.size)
    starts = np.zeros(encoder.size + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    rowid = order if len(rows) == num_rows else rows[order]
    return HistoryIndex(encoder, starts, event[order], rowid, unit, num_rows)


def _excluded_rows(
    table: pa.Table, columns: Sequence[str], excluded: Sequence[tuple[object, ...]]
) -> npt.NDArray[np.bool_]:
    """True for rows whose join keys equal one of `excluded`."""
    hit = np.zeros(table.num_rows, dtype=bool)
    for key in excluded:
        try:
            scalars = [pa.scalar(value, type=table.schema.field(column).type)
                       for column, value in zip(columns, key, strict=True)]
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            continue  # a value the column's type cannot hold matches no row
        match = np.ones(table.num_rows, dtype=bool)
        for column, scalar in zip(columns, scalars, strict=True):
            equal = pc.equal(table[column], scalar)
            match &= pc.fill_null(equal, False).to_numpy(zero_copy_only=False)
        hit |= match
    return hit


def _composite(kid: IntArray, event: IntArray, keys: int) -> tuple[IntArray, int]:
    """Pack (key id, event time) into one sortable int64, with the bit shift used.

    Times are offsets from the earliest one, or their ranks when the span does
    not fit next to the key ids.
    """
    if len(event) == 0:
        return np.empty(0, np.int64), 1
    key_bits = max(1, keys.bit_length())
    emin, emax = int(event.min()), int(event.max())
    span_bits = max(1, (emax - emin).bit_length())
    if key_bits + span_bits <= MAX_COMPOSITE_BITS:
        return (kid << span_bits) | (event - emin), span_bits
    _, ranks = np.unique(event, return_inverse=True)
    rank_bits = max(1, (len(event)).bit_length())
    if key_bits + rank_bits > _INT64_BITS:  # pragma: no cover - 2^62 rows
        raise FailedPreconditionError("history too large to index", reason="SOURCE_TOO_LARGE")
    return (kid << rank_bits) | ranks.astype(np.int64), rank_bits


def _keep_winners(comp: IntArray, order: IntArray, created: IntArray) -> tuple[IntArray, IntArray]:
    """Among entries with the same (key, event time), keep the one with the
    greatest created timestamp, then the one last in the source.

    `comp` is sorted and `order[i]` is the row behind ``comp[i]``; rows are
    numbered in source order and `created` is indexed by row.
    Returns the distinct `comp` values and the rows that win them.
    """
    if len(comp) < 2:
        return comp, order
    same = comp[1:] == comp[:-1]
    if not same.any():
        return comp, order
    tied = np.zeros(len(comp), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    at = np.flatnonzero(tied)
    # Re-sort only the tied entries by (comp, created, row); comp stays sorted.
    rows = order[at]
    resort = np.lexsort((rows, created[rows], comp[at]))
    order = order.copy()
    order[at] = rows[resort]
    last: npt.NDArray[np.bool_] = np.ones(len(comp), dtype=bool)
    last[:-1] = ~same
    return comp[last], order[last]
