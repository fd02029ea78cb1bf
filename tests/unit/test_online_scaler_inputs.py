"""A lookup's scaler inputs equal a training batch's, bit for bit.

Online, the values read (Python ints and floats) become the scalers' float64
matrix in one NumPy conversion; a training batch reads them from Arrow arrays
(`Matrix.stack` of `Numbers.of`). Both must give the same bits before and
after `affine`, for every numeric type, huge integers, NaN, infinities, -0.0
and values that are not PRESENT.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver import ValueType
from quiver_server.serving.online_read import NOT_FOUND, PRESENT, ZERO_VALUES, OutputColumn
from quiver_server.serving.online_transform import scaler_matrix
from quiver_server.transforms.builtins import Matrix, Numbers, affine

VALUES = {
    ValueType.INT64: st.integers(-(2**63), 2**63 - 1),
    ValueType.INT32: st.integers(-(2**31), 2**31 - 1),
    ValueType.FLOAT64: st.floats(),
    ValueType.FLOAT32: st.floats(width=32),
}


@st.composite
def columns(draw: st.DrawFn, count: int) -> tuple[ValueType, list[Any], list[int]]:
    dtype = draw(st.sampled_from(list(VALUES)))
    values = draw(st.lists(VALUES[dtype], min_size=count, max_size=count))
    present = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    return dtype, values, [PRESENT if p else NOT_FOUND for p in present]


@st.composite
def lookups(draw: st.DrawFn) -> tuple[int, list[tuple[ValueType, list[Any], list[int]]]]:
    count = draw(st.integers(1, 12))
    return count, draw(st.lists(columns(count), min_size=1, max_size=6))


def bits(values: np.ndarray) -> list[bytes]:
    return [struct.pack("<d", v) for v in values.tolist()]


@settings(deadline=None)
@given(lookup=lookups(), parameters=st.lists(
    st.tuples(st.floats(allow_nan=False), st.floats(allow_nan=False)), min_size=6, max_size=6))
def test_lookup_and_training_batch_scale_the_same_bits(
    lookup: tuple[int, list[tuple[ValueType, list[Any], list[int]]]],
    parameters: list[tuple[float, float]],
) -> None:
    count, drawn = lookup
    online_columns = [
        # As a lookup grades them: the zero value where not PRESENT.
        OutputColumn(dtype, [v if s == PRESENT else ZERO_VALUES[dtype]
                             for v, s in zip(values, statuses, strict=True)], statuses, [0] * count)
        for dtype, values, statuses in drawn
    ]
    training = Matrix.stack([
        Numbers.of(pa.array([v if s == PRESENT else None
                             for v, s in zip(values, statuses, strict=True)], dtype.arrow_type))
        for dtype, values, statuses in drawn
    ])
    online = scaler_matrix(online_columns, count)
    table = parameters[:len(drawn)]
    assert [None if n is None else n.tolist() for n in online.nulls] == [
        None if n is None else n.tolist() for n in training.nulls]
    kept = [np.ones(count, bool) if n is None else ~n for n in online.nulls]
    for row, keep in enumerate(kept):  # the values under a null are not read
        assert bits(online.values[row][keep]) == bits(training.values[row][keep])
    scaled = zip(affine(online, table), affine(training, table), kept, strict=True)
    for online_row, training_row, keep in scaled:
        assert bits(online_row.values[keep]) == bits(training_row.values[keep])


def test_float32_values_are_rounded_to_float32_first() -> None:
    column = OutputColumn(ValueType.FLOAT32, [0.1], [PRESENT], [0])
    [row] = scaler_matrix([column], 1).rows()
    assert row.values.tolist() == [float(np.float32(0.1))]
    assert row.nulls is None
