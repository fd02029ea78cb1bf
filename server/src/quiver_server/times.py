"""Which times Quiver accepts from outside, and the clock it checks them against.

Every time is stored as int64 microseconds since the Unix epoch, UTC, and
clients read them back as Python datetimes, so a time must lie between
0001-01-01 and 9999-12-31 (Arrow's timestamp[us] reaches much further; the
client cannot). Event and created times of written rows must also not be more
than a configured skew ahead of the server's clock: the write rule keeps the
row with the newest event time, so one row from the far future would pin its
value online and make every later write "superseded".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from quiver.errors import FieldViolation

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_TIME = datetime(1, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def micros(value: datetime) -> int:
    """`value` (aware) as microseconds since the epoch."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


MIN_MICROS = micros(MIN_TIME)
MAX_MICROS = micros(MAX_TIME)


def latest_allowed(now: datetime, max_future_seconds: float) -> datetime:
    """The latest event or created time a write may carry at `now`."""
    if max_future_seconds >= (MAX_TIME - now).total_seconds():
        return MAX_TIME
    return now + timedelta(seconds=max_future_seconds)


def time_violation(
    field: str, column: pa.Array | pa.ChunkedArray, latest: datetime | None
) -> FieldViolation | None:
    """A violation naming the first row of `column` outside the accepted times, or None.

    Args:
        field: The field to name (``columns.event_timestamp``).
        column: Timestamps (any unit, UTC) or int64 microseconds; nulls are skipped.
        latest: The latest time allowed (the clock plus the skew), or None for
            the representable range only.
    """
    values = column
    if pa.types.is_timestamp(column.type):
        if column.type.unit != "us":
            column = column.cast(
                options=pc.CastOptions(
                    pa.timestamp("us", tz=column.type.tz), allow_time_truncate=True
                )
            )
        values = column.cast(pa.int64())
    upper = MAX_MICROS if latest is None else micros(latest)
    bad = pc.or_(pc.less(values, MIN_MICROS), pc.greater(values, upper)).fill_null(False)
    if not pc.any(bad).as_py():
        return None
    flags = bad.combine_chunks() if isinstance(bad, pa.ChunkedArray) else bad
    rows = pc.indices_nonzero(flags)
    first = int(rows[0].as_py())
    value = int(values[first].as_py())
    more = f" ({len(rows) - 1} more row(s) like it)" if len(rows) > 1 else ""
    if value < MIN_MICROS or value > MAX_MICROS:
        description = (
            f"row {first}: {value} microseconds since the epoch is outside "
            f"{MIN_TIME:%Y-%m-%d}..{MAX_TIME:%Y-%m-%d}, the times Quiver stores{more}"
        )
    else:
        when = EPOCH + timedelta(microseconds=value)
        description = (
            f"row {first}: {when.isoformat()} is in the future; at most "
            f"{latest.isoformat() if latest else MAX_TIME.isoformat()} is accepted now "
            f"(the server clock plus serving.max_future_seconds){more}"
        )
    return FieldViolation(field, description)
