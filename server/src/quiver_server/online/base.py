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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from quiver import FeatureView, ValueType
from quiver.errors import InvalidArgumentError


@dataclass(frozen=True)
class ViewTable:
    """Where and how one feature view is stored online."""

    project: str
    view: FeatureView
    # Feature name -> short storage name (at most 15 characters).
    bin_names: Mapping[str, str]
    # The version of a computed view's history whose rows the store holds (0:
    # the view reads ready-made history); each version has its own storage,
    # so a view switches versions online in one registry commit.
    generation: int = 0

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def storage_name(self) -> str:
        """The name the store files the view's rows under: the view, or ``view-vN``.

        View names never contain "-", so no view's name equals another's storage name.
        """
        return self.view.name if self.generation == 0 else f"{self.view.name}-v{self.generation}"


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


def feature_type(view: FeatureView, feature: str) -> ValueType:
    """The type of `feature`, or InvalidArgumentError naming the view's features."""
    try:
        return view.feature(feature).dtype
    except KeyError:
        raise InvalidArgumentError.for_field(
            "features",
            f"feature view {view.name!r} has no feature {feature!r}; "
            f"it has: {', '.join(view.feature_names)}",
        ) from None


def reject_unknown_features(table: ViewTable, batch: WriteBatch, known: Sequence[str]) -> None:
    """InvalidArgumentError if the batch carries a feature the store does not lay out."""
    unknown = [f for f in batch.features if f not in known]
    if unknown:
        raise InvalidArgumentError.for_field(
            "features",
            f"feature view {table.name!r} has no feature {unknown[0]!r}; "
            f"it has: {', '.join(known)}",
        )
