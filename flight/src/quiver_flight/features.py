"""Feature values of a view's index entries, laid out for random row access.

A training set reads one history row per spine row and view, at random. Kept
column by column, that is one cache miss per feature; here the fixed-width
features of an entry sit side by side in one row of an int64 matrix (with
their null bits in trailing words), so a row costs about one miss however many
features it holds. Strings and bytes stay Arrow arrays. A last all-null row
stands for "no match", so gathers need no masking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from quiver import Field
from quiver._types import ValueType
from quiver_flight.keys import IntArray

_FIXED = {
    ValueType.INT64, ValueType.INT32, ValueType.FLOAT64, ValueType.FLOAT32,
    ValueType.BOOL, ValueType.TIMESTAMP,
}


@dataclass(frozen=True)
class FeatureBlock:
    """The selected features of every index entry, plus a null row at the end."""

    features: tuple[Field, ...]
    # (entries + 1) x (fixed-width features + null words), int64.
    matrix: npt.NDArray[np.int64]
    # Feature position -> matrix column, for fixed-width features.
    slots: dict[int, int]
    first_null_word: int
    # Feature position -> Arrow array of entries + 1 values, for the rest.
    variable: dict[int, pa.Array]

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes) + sum(int(a.nbytes) for a in self.variable.values())

    @staticmethod
    def estimate(features: Sequence[Field], entries: int) -> int:
        """Bytes a block of `features` over `entries` entries takes, roughly."""
        fixed = sum(1 for f in features if f.dtype in _FIXED)
        words = fixed + (fixed + 63) // 64
        return (entries + 1) * (8 * words + 32 * (len(features) - fixed))

    @classmethod
    def build(cls, features: Sequence[Field], columns: Sequence[pa.Array]) -> FeatureBlock:
        """Lay out `columns` (one per feature, in entry order, declared types)."""
        entries = len(columns[0]) if columns else 0
        fixed = [i for i, f in enumerate(features) if f.dtype in _FIXED]
        words = (len(fixed) + 63) // 64
        matrix = np.zeros((entries + 1, len(fixed) + words), dtype=np.int64)
        slots: dict[int, int] = {}
        variable: dict[int, pa.Array] = {}
        for i, (feature, column) in enumerate(zip(features, columns, strict=True)):
            if i not in fixed:
                variable[i] = pa.concat_arrays([column, pa.nulls(1, type=column.type)])
                continue
            slot = len(slots)
            slots[i] = slot
            matrix[:entries, slot] = _as_int64(column, feature.dtype)
            valid = np.ones(entries, dtype=bool)
            if column.null_count:
                valid = column.is_valid().to_numpy(zero_copy_only=False)
            word = len(fixed) + slot // 64
            matrix[:entries, word] |= valid.astype(np.int64) << (slot % 64)
        return cls(tuple(features), matrix, slots, len(fixed), variable)

    def gather(self, pos: IntArray) -> list[pa.Array]:
        """The features of entries `pos` (-1: no match, all null), one array each."""
        entries = len(self.matrix) - 1
        at = np.where(pos >= 0, pos, entries)
        rows = self.matrix.take(at, axis=0) if self.slots else None
        result: list[pa.Array] = []
        for i, feature in enumerate(self.features):
            if i in self.variable:
                result.append(self.variable[i].take(pa.array(at)))
                continue
            assert rows is not None
            slot = self.slots[i]
            bits = (rows[:, self.first_null_word + slot // 64] >> (slot % 64)) & 1
            result.append(_from_int64(rows[:, slot], bits.astype(bool), feature.dtype))
        return result


def _as_int64(column: pa.Array, dtype: ValueType) -> npt.NDArray[np.int64]:
    if dtype == ValueType.TIMESTAMP:
        column = column.cast(pa.int64())
    elif dtype in (ValueType.FLOAT64, ValueType.FLOAT32):
        values = column.cast(pa.float64()).fill_null(0.0).to_numpy()
        return np.asarray(values, dtype=np.float64).view(np.int64)
    elif dtype == ValueType.BOOL:
        column = column.cast(pa.int64())
    filled = column.fill_null(0).to_numpy()
    return np.asarray(filled, dtype=np.int64)


def _from_int64(raw: npt.NDArray[np.int64], valid: npt.NDArray[np.bool_], dtype: ValueType) -> pa.Array:
    n = len(raw)
    nulls = n - int(np.count_nonzero(valid))
    bitmap = None if nulls == 0 else pa.py_buffer(np.packbits(valid, bitorder="little"))
    data: npt.NDArray[np.generic]
    if dtype == ValueType.FLOAT64:
        data = np.ascontiguousarray(raw).view(np.float64)
    elif dtype == ValueType.FLOAT32:
        data = np.ascontiguousarray(raw).view(np.float64).astype(np.float32)
    elif dtype == ValueType.INT32:
        data = raw.astype(np.int32)
    elif dtype == ValueType.BOOL:
        data = np.packbits(raw.astype(bool), bitorder="little")
    else:
        data = np.ascontiguousarray(raw)
    return pa.Array.from_buffers(dtype.arrow_type, n, [bitmap, pa.py_buffer(data)], null_count=nulls)
