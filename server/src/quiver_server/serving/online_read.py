"""Online reads: resolve the request, read every view in one store call, grade values.

Statuses follow DESIGN.md: NOT_FOUND when the entity has no row in the view,
OUTSIDE_MAX_AGE when the row is older than the view's ttl at read time (even if
the store still holds it), NULL_VALUE for a null feature, PRESENT otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quiver.errors import InvalidArgumentError
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.types import ValueType
from quiver_server.online.base import OnlineStore, ViewRead, ViewReadResult, ViewTable
from quiver_server.online.keys import encode_keys
from quiver_server.registry.snapshot import FeatureRef, Snapshot
from quiver_server.telemetry.spans import traced
from quiver_server.transforms.engine import Transformations
from quiver_server.transforms.pipeline import Pipeline
from quiver_server.transforms.selection import select

PRESENT: int = pb.FEATURE_STATUS_PRESENT
NULL_VALUE: int = pb.FEATURE_STATUS_NULL_VALUE
NOT_FOUND: int = pb.FEATURE_STATUS_NOT_FOUND
OUTSIDE_MAX_AGE: int = pb.FEATURE_STATUS_OUTSIDE_MAX_AGE


@dataclass(frozen=True)
class ViewPart:
    """The features of one view a request reads, and where they land in the output."""

    table: ViewTable
    features: list[str]
    # Output column index of each feature in `features`.
    positions: list[int]


@dataclass(frozen=True)
class ReadPlan:
    """What a lookup reads (`refs`, by view) and what it answers (`output_names`).

    With on-demand features or transforms, `pipeline` turns the stored values
    read into the output columns (see `serving.online_transform`).
    """

    refs: list[FeatureRef]
    output_names: list[str]
    parts: list[ViewPart]
    key_types: dict[str, ValueType]
    pipeline: Pipeline | None = None


@dataclass
class OutputColumn:
    dtype: ValueType
    values: list[Any]
    statuses: list[int]
    event_ts: list[int]


class PlanCache:
    """Resolved plans per registry version and selection; resolving is not free."""

    def __init__(
        self, transformations: Transformations | None = None, max_entries: int = 1024
    ) -> None:
        self._entries: dict[tuple[object, ...], ReadPlan] = {}
        self._max = max_entries
        self._lock = threading.Lock()
        self._transformations = transformations

    @traced("quiver.registry.resolve")
    def get(
        self,
        snapshot: Snapshot,
        features: Sequence[str],
        feature_service: str,
        full_names: bool,
        transform_version: int = 0,
    ) -> ReadPlan:
        key = (snapshot.version, tuple(features), feature_service, full_names, transform_version)
        plan = self._entries.get(key)
        if plan is None:
            plan = build_plan(snapshot, features, feature_service, full_names,
                              self._transformations, transform_version)
            with self._lock:
                if len(self._entries) >= self._max:
                    self._entries.clear()
                self._entries[key] = plan
        return plan


def build_plan(
    snapshot: Snapshot,
    features: Sequence[str],
    feature_service: str,
    full_names: bool,
    transformations: Transformations | None = None,
    transform_version: int = 0,
) -> ReadPlan:
    selection = select(snapshot, list(features), feature_service or None)
    refs = list(selection.stored)
    pipeline = None
    if not selection.plain or transform_version:
        if transformations is None:
            raise AssertionError("a plan with transformations needs a Transformations")
        pipeline = transformations.pipeline(
            snapshot, selection, version=transform_version, full_names=full_names
        )
    # A pipeline names (and checks) its output columns; otherwise they are the refs'.
    names = pipeline.output_names if pipeline is not None else _output_names(refs, full_names)
    parts: dict[str, ViewPart] = {}
    key_types: dict[str, ValueType] = {}
    for position, ref in enumerate(refs):
        part = parts.get(ref.view.name)
        if part is None:
            part = ViewPart(snapshot.view_table(ref.view.name), [], [])
            parts[ref.view.name] = part
            for key in ref.view.join_keys:
                known = key_types.setdefault(key.name, key.dtype)
                if known != key.dtype:
                    raise InvalidArgumentError.for_field(
                        "features",
                        f"join key {key.name!r} is {known.name.lower()} in one view and "
                        f"{key.dtype.name.lower()} in {ref.view.name!r}; request them separately",
                    )
        part.features.append(ref.feature.name)
        part.positions.append(position)
    return ReadPlan(refs, names, list(parts.values()), key_types, pipeline)


def _output_names(refs: Sequence[FeatureRef], full_names: bool) -> list[str]:
    names = [ref.output_name(full_names) for ref in refs]
    seen: dict[str, str] = {}
    for ref, name in zip(refs, names, strict=True):
        if name in seen:
            raise InvalidArgumentError.for_field(
                "full_feature_names",
                f"feature name {name!r} comes from both {seen[name]!r} and {ref.view.name!r}; "
                f"set full_feature_names to tell them apart",
            )
        seen[name] = ref.view.name
    return names


def view_reads(plan: ReadPlan, key_columns: Mapping[str, Sequence[Any]]) -> list[ViewRead]:
    """The store reads `plan` makes for these entities, one per view."""
    encoded: dict[tuple[str, ...], list[bytes]] = {}
    reads = []
    for part in plan.parts:
        names = tuple(part.table.view.join_key_names)
        keys = encoded.get(names)
        if keys is None:
            # Views of the same entity share their encoded keys.
            keys = encode_keys(part.table.view.join_keys, [key_columns[n] for n in names])
            encoded[names] = keys
        reads.append(ViewRead(part.table, keys, part.features))
    return reads


def read_online(
    store: OnlineStore,
    plan: ReadPlan,
    key_columns: Mapping[str, Sequence[Any]],
    count: int,
    now_us: int | None = None,
) -> list[OutputColumn]:
    """Read every view of `plan` in one store call and grade each value."""
    results = store.read(view_reads(plan, key_columns))
    if now_us is None:
        now_us = time.time_ns() // 1000
    columns: list[OutputColumn | None] = [None] * len(plan.refs)
    for part, result in zip(plan.parts, results, strict=True):
        view_status = _row_statuses(result, part.table.view.ttl_seconds, now_us)
        all_present = view_status.count(PRESENT) == count
        event_ts = [ts or 0 for ts in result.event_ts]
        for feature, position in zip(part.features, part.positions, strict=True):
            dtype = plan.refs[position].feature.dtype
            columns[position] = _grade(
                dtype, result.values[feature], view_status, all_present, event_ts
            )
    return columns  # type: ignore[return-value]


def _row_statuses(result: ViewReadResult, ttl_seconds: int, now_us: int) -> list[int]:
    oldest = now_us - ttl_seconds * 1_000_000 if ttl_seconds else None
    statuses: list[int] = []
    for ts in result.event_ts:
        if ts is None:
            statuses.append(NOT_FOUND)
        elif oldest is not None and ts < oldest:
            statuses.append(OUTSIDE_MAX_AGE)
        else:
            statuses.append(PRESENT)
    return statuses


ZERO_VALUES: dict[ValueType, Any] = {
    ValueType.INT64: 0, ValueType.INT32: 0, ValueType.FLOAT64: 0.0, ValueType.FLOAT32: 0.0,
    ValueType.BOOL: False, ValueType.STRING: "", ValueType.BYTES: b"", ValueType.TIMESTAMP: 0,
}


def _grade(
    dtype: ValueType,
    raw: list[Any],
    row_status: list[int],
    all_present: bool,
    event_ts: list[int],
) -> OutputColumn:
    # Fast path (the common case): every row found and fresh, no nulls. The
    # checks run in C, so 100 entities cost about as much as one.
    if all_present and None not in raw:
        return OutputColumn(dtype, raw, row_status, event_ts)
    zero = ZERO_VALUES[dtype]
    values = [
        value if status == PRESENT and value is not None else zero
        for value, status in zip(raw, row_status, strict=True)
    ]
    statuses = [
        NULL_VALUE if status == PRESENT and value is None else status
        for value, status in zip(raw, row_status, strict=True)
    ]
    return OutputColumn(dtype, values, statuses, event_ts)
