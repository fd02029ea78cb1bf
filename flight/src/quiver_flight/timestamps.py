"""Event times as int64 counts of one unit, converted without losing exactness.

Each view's history is compared in microseconds, or in nanoseconds when its
event-time column is stored in nanoseconds. A spine time finer than that unit
is rounded down for the upper bound (``e <= t`` holds for integer ``e`` exactly
when ``e <= floor(t)``) and up for the ttl bound (``e >= t - T`` exactly when
``e >= ceil(t) - T``), so sub-unit precision never lets a future row in nor
drops a valid one.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa

_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_INT64_MAX = np.iinfo(np.int64).max


class TimestampRangeError(ValueError):
    """A timestamp does not fit in int64 at the unit needed to compare it."""


def comparison_unit(arrow_type: pa.DataType) -> str:
    """The unit a history event-time column of `arrow_type` is compared in."""
    return "ns" if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "ns" else "us"


def per_second(unit: str) -> int:
    return _PER_SECOND[unit]


def to_units(
    values: pa.Array | pa.ChunkedArray, unit: str, *, ceil: bool = False
) -> npt.NDArray[np.int64]:
    """Timestamps as int64 counts of `unit` since the epoch (nulls become 0).

    Args:
        values: An Arrow timestamp column, naive or with a time zone (the stored
            value is the UTC instant either way).
        unit: "us" or "ns".
        ceil: Round a finer timestamp up instead of down.

    Raises:
        TimestampRangeError: a coarser timestamp overflows int64 at `unit`.
    """
    source = values.type.unit
    raw = values.cast(pa.int64()).fill_null(0)
    ints: npt.NDArray[np.int64] = np.asarray(raw.to_numpy(), dtype=np.int64)
    have, want = _PER_SECOND[source], _PER_SECOND[unit]
    if have == want:
        return ints
    if have < want:
        factor = want // have
        limit = _INT64_MAX // factor
        if len(ints) and (int(ints.max()) > limit or int(ints.min()) < -limit):
            raise TimestampRangeError(
                f"timestamps beyond the range of int64 {unit} (years 1677-2262 for ns)"
            )
        return ints * factor
    factor = have // want
    if ceil:
        return -np.floor_divide(-ints, factor)
    return np.floor_divide(ints, factor)
