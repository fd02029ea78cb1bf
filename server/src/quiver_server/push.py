"""Pushed rows: validate against the view, then write online, offline or both.

Validation happens before anything is written, so a bad push leaves every
store as it was. Naive timestamps are read as UTC (as in materialization).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from quiver import FeatureView, PushResult, PushTarget, ValueType
from quiver.errors import FieldViolation, InvalidArgumentError
from quiver_server import echo
from quiver_server.offline.append import append_history
from quiver_server.offline.columns import cast_column, compatible
from quiver_server.online.base import OnlineStore, ViewTable, WriteBatch
from quiver_server.online.keys import encode_keys
from quiver_server.telemetry.spans import traced
from quiver_server.times import latest_allowed, time_violation

if TYPE_CHECKING:
    from quiver_server.monitoring.sinks import ProfileAccumulator

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_PUSH_TIME = "__quiver_push_time"


def validate_rows(view: FeatureView, rows: pa.Table, latest: datetime) -> pa.Table:
    """Check names, types and timestamps; returns the rows cast to the declared types.

    Event and created times must lie between the first representable time and
    `latest` (the clock plus the allowed skew); timestamp features within the
    representable range (`quiver_server.times`).

    Raises:
        InvalidArgumentError: with one violation per bad column.
    """
    source = view.source
    expected: dict[str, ValueType] = {k.name: k.dtype for k in view.join_keys}
    expected.update({f.name: f.dtype for f in view.schema})
    expected[source.timestamp_field] = ValueType.TIMESTAMP
    optional = {source.created_timestamp_field} if source.created_timestamp_field else set()
    # Nulls are fine in features, never in what identifies or orders a row.
    required = {*view.join_key_names, source.timestamp_field, *optional}
    violations: list[FieldViolation] = []
    present = set(rows.column_names)
    for name in expected:
        if name not in present:
            violations.append(FieldViolation(f"columns.{name}", "missing column"))
    unknown = [n for n in rows.column_names if n not in expected and n not in optional]
    allowed = echo.name_list([*expected, *sorted(optional)], limit=len(expected) + 1)
    for name in unknown[: echo.LIST_NAMES]:
        violations.append(FieldViolation(
            f"columns.{echo.clip(name)}",
            f"not a column of feature view {view.name!r}; allowed: {allowed}",
        ))
    if len(unknown) > echo.LIST_NAMES:
        violations.append(FieldViolation(
            "columns", f"{len(unknown) - echo.LIST_NAMES} more columns are not in the view either"
        ))
    if rows.num_rows == 0:
        violations.append(FieldViolation("columns", "push at least one row"))
    arrays: dict[str, pa.ChunkedArray] = {}
    for name in rows.column_names:
        if name not in expected and name not in optional:
            continue
        column = rows[name]
        want = expected.get(name, ValueType.TIMESTAMP)
        expectation = f"expected {want.name.lower()} ({want.arrow_type}), got {column.type}"
        if not (compatible(want, column.type) or pa.types.is_null(column.type)):
            violations.append(FieldViolation(f"columns.{name}", expectation))
            continue
        try:
            cast = cast_column(column, want)
        except pa.ArrowInvalid as exc:
            violations.append(FieldViolation(f"columns.{name}", f"{expectation}: {exc}"))
            continue
        if name in required and cast.null_count:
            what = "join key" if name in view.join_key_names else "timestamp"
            violations.append(FieldViolation(
                f"columns.{name}", f"{what} column has {cast.null_count} null value(s)"
            ))
        if want == ValueType.TIMESTAMP:
            ordering = name == source.timestamp_field or name in optional
            problem = time_violation(f"columns.{name}", cast, latest if ordering else None)
            if problem is not None:
                violations.append(problem)
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


def to_write_batch(view: FeatureView, rows: pa.Table, created_column: str) -> WriteBatch:
    """Validated rows as a store write, created times from `created_column`."""
    micros = pa.int64()
    event = rows[view.source.timestamp_field].cast(micros).to_pylist()
    created = rows[created_column].cast(micros).to_pylist()
    features = {}
    for feature in view.schema:
        column = rows[feature.name]
        if feature.dtype == ValueType.TIMESTAMP:
            column = column.cast(micros)
        features[feature.name] = column.to_pylist()
    keys = encode_keys(view.join_keys, [rows[k].to_pylist() for k in view.join_key_names])
    return WriteBatch(keys=keys, event_ts=event, created_ts=created, features=features)


@traced("quiver.push")
def push(
    store: OnlineStore,
    table: ViewTable,
    offline_root: str,
    rows: pa.Table,
    to: PushTarget,
    *,
    max_future_seconds: float = 300.0,
    now: datetime | None = None,
    profiles: ProfileAccumulator | None = None,
) -> PushResult:
    """Validate, then write. Offline goes first: it is append-only, so a later
    online failure leaves history that a materialization would write anyway.

    Event and created times more than `max_future_seconds` after `now` (the
    server clock by default) are refused. Rows written online are profiled
    into `profiles` (feature monitoring).
    """
    view = table.view
    now = now or datetime.now(UTC)
    rows = validate_rows(view, rows, latest_allowed(now, max_future_seconds))
    # Rows without a created time get the push time, the same one online and
    # offline. A view without a created column keeps it out of its history.
    created_field = view.source.created_timestamp_field
    created_column = created_field or _PUSH_TIME
    if created_column not in rows.column_names:
        rows = rows.append_column(created_column, pa.array([now] * rows.num_rows, _TIMESTAMP))
    if to.offline:
        append_history(offline_root, view, rows if created_field else rows.drop_columns([_PUSH_TIME]))
    superseded = 0
    if to.online:
        superseded = store.write(table, to_write_batch(view, rows, created_column)).superseded
        if profiles is not None:
            profiles.add_rows(view, "push", rows, view.source.timestamp_field)
    return PushResult(rows=rows.num_rows, superseded=superseded)
