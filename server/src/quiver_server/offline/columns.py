"""Which Arrow columns may carry each ValueType, and how they are cast.

One rule for every path that reads columns from outside, so a source that
trains also materializes and the same rows can be pushed:

- integers of any width for integer keys and features (narrowing checks that
  every value fits), and for float features;
- floats of any width for float features (float32 rounds);
- string, large_string, string_view and dictionary-encoded strings for
  strings; the binary equivalents (and fixed-size binary) for bytes;
- any timestamp for timestamps: naive values are read as UTC, finer units are
  truncated to microseconds.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from quiver.types import ValueType

_t = pa.types


def _is_string(x: pa.DataType) -> bool:
    return bool(_t.is_string(x) or _t.is_large_string(x) or _t.is_string_view(x))


def _is_binary(x: pa.DataType) -> bool:
    return bool(
        _t.is_binary(x) or _t.is_large_binary(x) or _t.is_binary_view(x)
        or _t.is_fixed_size_binary(x)
    )


def compatible(value_type: ValueType, arrow_type: pa.DataType) -> bool:
    """Whether a column of `arrow_type` may feed a `value_type` key or feature."""
    if _t.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if value_type in (ValueType.INT64, ValueType.INT32):
        return bool(_t.is_integer(arrow_type))
    if value_type in (ValueType.FLOAT64, ValueType.FLOAT32):
        return bool(_t.is_floating(arrow_type) or _t.is_integer(arrow_type))
    if value_type == ValueType.BOOL:
        return bool(_t.is_boolean(arrow_type))
    if value_type == ValueType.STRING:
        return _is_string(arrow_type)
    if value_type == ValueType.BYTES:
        return _is_binary(arrow_type)
    return bool(_t.is_timestamp(arrow_type))


def cast_options(value_type: ValueType, arrow_type: pa.DataType) -> pc.CastOptions:
    """How a compatible column converts to `value_type`'s Arrow type.

    Safe (values that do not fit raise ArrowInvalid) except for the documented
    losses: float32 rounding and sub-microsecond truncation.
    """
    target = value_type.arrow_type
    return pc.CastOptions(
        target,
        allow_float_truncate=value_type == ValueType.FLOAT32,
        allow_time_truncate=value_type == ValueType.TIMESTAMP,
    )


def cast_column(
    values: pa.Array | pa.ChunkedArray, value_type: ValueType
) -> pa.Array | pa.ChunkedArray:
    """`values` as `value_type`'s Arrow type (call `compatible` first).

    Raises:
        pa.ArrowInvalid: a value does not fit (an integer out of range).
    """
    if values.type == value_type.arrow_type:
        return values
    if _t.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return values.cast(options=cast_options(value_type, values.type))
