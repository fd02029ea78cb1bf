"""The online store contract every store (SQLite, Aerospike) implements.

Stores see entities as opaque byte keys (see `quiver_server.online.keys`) and
features by their short storage names ("bins"), which the registry assigns and
never reuses. Timestamps are integers: microseconds since the Unix epoch, UTC.

Write rule, identical in every store: a row replaces the stored row of the same
key only if ``(event_ts, created_ts) >= (stored event_ts, stored created_ts)``.
So an older event never overwrites a newer one, and writing the same rows
again changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from quiver.errors import InvalidArgumentError
from quiver_server.registry.layout import ViewTable, feature_type

__all__ = [
    "MAX_CACHED_READS",
    "OnlineStore",
    "PreparedCache",
    "ViewRead",
    "ViewReadResult",
    "ViewTable",
    "WriteBatch",
    "WriteResult",
    "WriteRows",
    "check_batch",
    "feature_type",
    "newest_per_key",
    "write_rows",
]

P = TypeVar("P")


@dataclass
class WriteBatch:
    """Rows for one view, column by column; all lists have the same length.

    `features` maps feature names (not bin names) to values; None is null.
    Rows need not be unique per key: the store keeps the newest per the write rule.
    """

    keys: list[bytes]
    event_ts: list[int]
    created_ts: list[int]
    features: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class WriteResult:
    rows: int
    # Rows not applied because the stored row was newer.
    superseded: int = 0


@dataclass(frozen=True)
class ViewRead:
    """Read `features` of `table` for `keys` (request order, duplicates allowed)."""

    table: ViewTable
    keys: Sequence[bytes]
    features: Sequence[str]


@dataclass
class ViewReadResult:
    """One view's answer, aligned with the request's keys.

    `event_ts[i]` is None when key i has no row; `values[f][i]` is then None too.
    """

    event_ts: list[int | None]
    values: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def not_found(cls, features: Sequence[str], n: int) -> ViewReadResult:
        """The answer when none of `n` keys has a row."""
        return cls([None] * n, {f: [None] * n for f in features})


@runtime_checkable
class OnlineStore(Protocol):
    """What serving, materialization and push need from an online store.

    Errors: a store that cannot be reached raises `quiver.errors.UnavailableError`;
    one that does not answer in time raises `DeadlineExceededError`.
    """

    def write(self, table: ViewTable, batch: WriteBatch) -> WriteResult:
        """Upsert rows following the write rule; returns counts."""
        ...

    def read(self, reads: Sequence[ViewRead]) -> list[ViewReadResult]:
        """Read several views in one round trip; one result per read, in order."""
        ...

    def delete(self, table: ViewTable, keys: Sequence[bytes]) -> int:
        """Remove the rows of `keys` from the view; returns how many existed."""
        ...

    def healthy(self) -> bool:
        """Whether the store answers right now (drives the gRPC health status)."""
        ...

    def close(self) -> None: ...


# Stores cache prepared reads per (view, feature selection); clients choose the
# selection, so the caches are bounded (and simply start over when full).
MAX_CACHED_READS = 1024


class PreparedCache(Generic[P]):
    """What a store prepares per view and selection (SQL, bin layouts), built once.

    An entry is rebuilt when the view or its storage names are no longer the same
    objects, i.e. when a new registry version is served; identity checks are cheap.
    """

    def __init__(self, build: Callable[[ViewTable, Any], P], limit: int = MAX_CACHED_READS) -> None:
        self._build = build
        self._limit = limit
        self._entries: dict[tuple[str, str, Hashable], tuple[object, object, P]] = {}

    def get(self, table: ViewTable, selection: Hashable = None) -> P:
        key = (table.project, table.name, selection)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is table.view and entry[1] is table.bin_names:
            return entry[2]
        prepared = self._build(table, selection)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[key] = (table.view, table.bin_names, prepared)
        return prepared


def check_batch(table: ViewTable, batch: WriteBatch) -> None:
    """Reject a batch whose columns disagree in length or carry null timestamps."""
    n = len(batch.keys)
    lengths = {"event_ts": len(batch.event_ts), "created_ts": len(batch.created_ts)}
    lengths.update({f"features[{f!r}]": len(v) for f, v in batch.features.items()})
    for name, length in lengths.items():
        if length != n:
            raise InvalidArgumentError.for_field(
                name,
                f"has {length} values but the batch for feature view {table.name!r} has {n} keys",
            )
    for name, column in (("event_ts", batch.event_ts), ("created_ts", batch.created_ts)):
        if any(v is None for v in column):
            raise InvalidArgumentError.for_field(
                name, f"timestamps of feature view {table.name!r} must not be null"
            )


def newest_per_key(
    keys: Sequence[bytes], event_ts: Sequence[int], created_ts: Sequence[int]
) -> list[int]:
    """Index of each key's winning row by the write rule (the later row wins ties), sorted.

    Stores apply this within a batch before writing, so only one row per key
    reaches the store and in-batch losers count as superseded.
    """
    best: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        j = best.get(key)
        if j is None or (event_ts[i], created_ts[i]) >= (event_ts[j], created_ts[j]):
            best[key] = i
    return sorted(best.values())


@dataclass
class WriteRows:
    """A batch checked and reduced to one row per key, columns in a store's feature order.

    `columns[i]` is None when the batch has no values for feature i (null rows).
    """

    keys: list[bytes]
    event_ts: list[int]
    created_ts: list[int]
    columns: list[list[Any] | None]
    # Rows dropped because a newer row of the same key is in the batch.
    superseded: int


def write_rows(table: ViewTable, batch: WriteBatch, features: Sequence[str]) -> WriteRows:
    """Check `batch` and keep each key's winning row (the write rule, within the batch).

    Only each key's newest row can win, so stores send only those: fewer
    operations, and no reliance on a store applying rows in order.

    Raises:
        InvalidArgumentError: columns of different lengths, null timestamps, or a
            feature the view does not have.
    """
    check_batch(table, batch)
    unknown = [f for f in batch.features if f not in features]
    if unknown:
        raise InvalidArgumentError.for_field(
            "features",
            f"feature view {table.name!r} has no feature {unknown[0]!r}; "
            f"it has: {', '.join(features)}",
        )
    keys, event_ts, created_ts = batch.keys, batch.event_ts, batch.created_ts
    columns: list[list[Any] | None] = [batch.features.get(f) for f in features]
    n = len(keys)
    if len(set(keys)) == n:
        return WriteRows(list(keys), list(event_ts), list(created_ts), columns, 0)
    picked = newest_per_key(keys, event_ts, created_ts)
    take = _picker(picked)
    return WriteRows(
        take(keys), take(event_ts), take(created_ts),
        [None if c is None else take(c) for c in columns], n - len(picked),
    )


def _picker(indices: list[int]) -> Callable[[Sequence[Any]], list[Any]]:
    """A function taking `indices` from a list, always returning a list."""
    if len(indices) == 1:
        index = indices[0]
        return lambda values: [values[index]]
    getter = itemgetter(*indices)
    return lambda values: list(getter(values))
