"""Pushed rows: validate against the view, then write online, offline or both.

Validation happens before anything is written, so a bad push leaves every
store as it was. Naive timestamps are read as UTC (as in materialization).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import pyarrow as pa
import pyarrow.compute as pc

from quiver import FeatureView, ValueType
from quiver.errors import FieldViolation, InvalidArgumentError
from quiver_server.offline.append import append_history
from quiver_server.online.base import OnlineStore, ViewTable, WriteBatch
from quiver_server.online.keys import encode_keys
from quiver_server.telemetry.hooks import traced_push

_TIMESTAMP = pa.timestamp("us", tz="UTC")
# Lossless widenings accepted on push; anything else must match the declared type.
_WIDENINGS = {
    (pa.int32(), pa.int64()), (pa.int16(), pa.int64()), (pa.int8(), pa.int64()),
    (pa.int16(), pa.int32()), (pa.int8(), pa.int32()), (pa.float32(), pa.float64()),
    (pa.large_string(), pa.string()), (pa.string_view(), pa.string()),
    (pa.large_binary(), pa.binary()),
}


_NARROWINGS = {(pa.int64(), pa.int32()), (pa.float64(), pa.float32())}


class PushTarget(Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    ONLINE_AND_OFFLINE = "online_and_offline"


@dataclass
class PushResult:
    rows: int
    superseded: int
    offline_files: list[str]


def validate_rows(view: FeatureView, rows: pa.Table) -> pa.Table:
    """Check names, types and timestamps; returns the rows cast to the declared types.

    Raises:
        InvalidArgumentError: with one violation per bad column.
    """
    source = view.source
    expected: dict[str, pa.DataType] = {k.name: k.dtype.arrow_type for k in view.join_keys}
    expected.update({f.name: f.dtype.arrow_type for f in view.schema})
    expected[source.timestamp_field] = _TIMESTAMP
    optional = {source.created_timestamp_field} if source.created_timestamp_field else set()
    violations: list[FieldViolation] = []
    present = set(rows.column_names)
    for name in expected:
        if name not in present:
            violations.append(FieldViolation(f"columns.{name}", "missing column"))
    for name in rows.column_names:
        if name not in expected and name not in optional:
            violations.append(FieldViolation(
                f"columns.{name}",
                f"not a column of feature view {view.name!r}; allowed: "
                f"{', '.join([*expected, *sorted(optional)])}",
            ))
    if rows.num_rows == 0:
        violations.append(FieldViolation("columns", "push at least one row"))
    arrays: dict[str, pa.ChunkedArray] = {}
    for name in rows.column_names:
        if name not in expected and name not in optional:
            continue
        column = rows[name]
        want = expected.get(name, _TIMESTAMP)
        cast = _cast(column, want)
        if cast is None:
            violations.append(FieldViolation(
                f"columns.{name}", f"expected {_describe(want)}, got {column.type}"
            ))
            continue
        if (name in view.join_key_names or want == _TIMESTAMP) and cast.null_count:
            what = "join key" if name in view.join_key_names else "timestamp"
            violations.append(FieldViolation(
                f"columns.{name}", f"{what} column has {cast.null_count} null value(s)"
            ))
        arrays[name] = cast
    if violations:
        raise InvalidArgumentError(
            f"rows do not match feature view {view.name!r}: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations=violations,
            reason="INVALID_PUSH",
            metadata={"feature_view": view.name},
        )
    return pa.table(arrays)


def _cast(column: pa.ChunkedArray, want: pa.DataType) -> pa.ChunkedArray | None:
    have = column.type
    if have == want:
        return column
    if pa.types.is_timestamp(want) and pa.types.is_timestamp(have):
        if have.tz is None:
            column = pc.assume_timezone(column, "UTC")
        return column.cast(want)
    if (have, want) in _WIDENINGS or pa.types.is_null(have):
        return column.cast(want)
    if (have, want) in _NARROWINGS:
        # Python ints and floats arrive as 64-bit; accept them for 32-bit
        # features when every value fits (int) or rounds (float).
        try:
            return column.cast(want, safe=want != pa.float32())
        except pa.ArrowInvalid:
            return None
    return None


def _describe(arrow_type: pa.DataType) -> str:
    value_type = ValueType.from_arrow(arrow_type)
    return f"{value_type.name.lower()} ({arrow_type})" if value_type else str(arrow_type)


def to_write_batch(view: FeatureView, rows: pa.Table) -> WriteBatch:
    """Validated rows as a store write; created time defaults to now."""
    micros = pa.int64()
    event = rows[view.source.timestamp_field].cast(micros).to_pylist()
    created_field = view.source.created_timestamp_field
    if created_field and created_field in rows.column_names:
        created = [c if c is not None else 0 for c in rows[created_field].cast(micros).to_pylist()]
    else:
        now = int(datetime.now(UTC).timestamp() * 1_000_000)
        created = [now] * rows.num_rows
    features = {}
    for feature in view.schema:
        column = rows[feature.name]
        if feature.dtype == ValueType.TIMESTAMP:
            column = column.cast(micros)
        features[feature.name] = column.to_pylist()
    keys = encode_keys(view.join_keys, [rows[k].to_pylist() for k in view.join_key_names])
    return WriteBatch(keys=keys, event_ts=event, created_ts=created, features=features)


@traced_push
def push(
    store: OnlineStore,
    table: ViewTable,
    offline_root: str,
    rows: pa.Table,
    to: PushTarget,
) -> PushResult:
    """Validate, then write. Offline goes first: it is append-only, so a later
    online failure leaves history that a materialization would write anyway."""
    view = table.view
    rows = validate_rows(view, rows)
    files: list[str] = []
    if to in (PushTarget.OFFLINE, PushTarget.ONLINE_AND_OFFLINE):
        offline = rows
        created_field = view.source.created_timestamp_field
        if created_field and created_field not in rows.column_names:
            now = datetime.now(UTC)
            offline = rows.append_column(created_field, pa.array([now] * rows.num_rows, _TIMESTAMP))
        files = append_history(offline_root, view, offline)
    superseded = 0
    if to in (PushTarget.ONLINE, PushTarget.ONLINE_AND_OFFLINE):
        result = store.write(table, to_write_batch(view, rows))
        superseded = result.superseded
    return PushResult(rows=rows.num_rows, superseded=superseded, offline_files=files)
