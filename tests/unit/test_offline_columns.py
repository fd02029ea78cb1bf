"""The one rule for which Arrow columns feed which ValueType (materialize, Flight, push)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from quiver import ValueType
from quiver_server.offline.columns import cast_column, compatible


@pytest.mark.parametrize(
    ("value_type", "arrow_type", "ok"),
    [
        (ValueType.INT32, pa.int64(), True),
        (ValueType.INT64, pa.uint8(), True),
        (ValueType.FLOAT64, pa.int32(), True),
        (ValueType.FLOAT32, pa.float64(), True),
        (ValueType.INT64, pa.float64(), False),
        (ValueType.STRING, pa.dictionary(pa.int32(), pa.string()), True),
        (ValueType.STRING, pa.large_string(), True),
        (ValueType.BYTES, pa.binary(4), True),
        (ValueType.BOOL, pa.int8(), False),
        (ValueType.TIMESTAMP, pa.timestamp("ns"), True),
        (ValueType.TIMESTAMP, pa.int64(), False),
    ],
)
def test_compatible(value_type: ValueType, arrow_type: pa.DataType, ok: bool) -> None:
    assert compatible(value_type, arrow_type) is ok


def test_casts_keep_values_and_refuse_what_does_not_fit() -> None:
    assert cast_column(pa.array([1, None]), ValueType.FLOAT64).to_pylist() == [1.0, None]
    assert cast_column(pa.array([0.1]), ValueType.FLOAT32).type == pa.float32()
    assert cast_column(pa.array(["a"]).dictionary_encode(), ValueType.STRING).to_pylist() == ["a"]
    with pytest.raises(pa.ArrowInvalid, match="not in range"):
        cast_column(pa.array([2**40]), ValueType.INT32)


def test_timestamps_naive_as_utc_and_truncated_to_microseconds() -> None:
    naive_ns = pa.array([1_500], pa.timestamp("ns"))  # 1.5 us after the epoch, no zone
    out = cast_column(naive_ns, ValueType.TIMESTAMP)
    assert out.type == pa.timestamp("us", tz="UTC")
    assert out.cast(pa.int64()).to_pylist() == [1]
