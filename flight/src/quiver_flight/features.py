"""Feature values of a view's index entries, laid out for random row access.

A training set reads one history row per spine row and view, at random. Kept
column by column, that is one cache miss per feature; here the features of an
entry sit side by side in one row of an int64 matrix (with their null bits in
trailing words), so a row costs about one miss however many features it
holds. Strings and bytes are stored as codes into a dictionary of their
distinct values and decoded after the gather. A last all-null row stands for
"no match", so gathers need no masking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from quiver import Field
from quiver.types import ValueType
from quiver_flight.keys import IntArray

_FIXED = {
    ValueType.INT64, ValueType.INT32, ValueType.FLOAT64, ValueType.FLOAT32,
    ValueType.BOOL, ValueType.TIMESTAMP,
}


@dataclass(frozen=True)
class FeatureBlock:
    """The selected features of every index entry, plus a null row at the end."""

    features: tuple[Field, ...]
    # (entries + 1) x (features + null words), int64; column i is feature i.
    matrix: npt.NDArray[np.int64]
    # Feature position -> distinct values, for strings and bytes (the matrix
    # holds codes into it).
    dictionaries: dict[int, pa.Array]

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes) + sum(int(a.nbytes) for a in self.dictionaries.values())

    @staticmethod
    def estimate(features: Sequence[Field], entries: int) -> int:
        """Bytes a block of `features` over `entries` entries takes, roughly."""
        words = len(features) + (len(features) + 63) // 64
        return (entries + 1) * 8 * words

    @classmethod
    def build(
        cls, features: Sequence[Field], columns: Iterable[pa.Array | pa.ChunkedArray], rowid: IntArray
    ) -> FeatureBlock:
        """Lay out the entries' features.

        Args:
            features: The features, in output order.
            columns: One history column per feature, in history row order, of
                the declared types; consumed one at a time, so a generator that
                reads each column when asked keeps only one in memory.
            rowid: The history row of each index entry.
        """
        count = len(features)
        matrix = np.zeros((len(rowid) + 1, count + (count + 63) // 64), dtype=np.int64)
        entries = matrix[:-1]
        dictionaries: dict[int, pa.Array] = {}
        for i, (feature, column) in enumerate(zip(features, columns, strict=True)):
            if feature.dtype in _FIXED:
                values = _as_int64(column, feature.dtype)
            else:
                if isinstance(column, pa.ChunkedArray):
                    column = column.combine_chunks()
                encoded = pc.dictionary_encode(column)
                dictionaries[i] = encoded.dictionary
                values = np.asarray(encoded.indices.cast(pa.int64()).fill_null(0).to_numpy(),
                                    dtype=np.int64)
            entries[:, i] = values[rowid]
            bit = np.int64(1) << np.int64(i % 64)
            if column.null_count:
                valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
                entries[:, count + i // 64] |= np.where(valid[rowid], bit, np.int64(0))
            else:
                entries[:, count + i // 64] |= bit
        return cls(tuple(features), matrix, dictionaries)

    def gather(self, pos: IntArray) -> list[pa.Array]:
        """The features of entries `pos` (-1: no match, all null), one array each."""
        entries = len(self.matrix) - 1
        rows = self.matrix.take(np.where(pos >= 0, pos, entries), axis=0)
        count = len(self.features)
        result: list[pa.Array] = []
        for i, feature in enumerate(self.features):
            valid = ((rows[:, count + i // 64] >> (i % 64)) & 1).astype(bool)
            dictionary = self.dictionaries.get(i)
            if dictionary is None:
                result.append(_from_int64(rows[:, i], valid, feature.dtype))
            else:
                codes = pa.array(rows[:, i], mask=~valid)
                result.append(dictionary.take(codes))
        return result


def _as_int64(column: pa.Array | pa.ChunkedArray, dtype: ValueType) -> npt.NDArray[np.int64]:
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
