"""Join keys as dense integer ids.

The engine never compares key values row by row: each distinct key tuple of a
view's history gets an id in ``0..size-1``, spine keys are mapped to the same
ids (``-1`` when the history never saw them), and the join works on integers.

Integer keys use a lookup table when their range is compact (typical ids) and
binary search otherwise; strings and bytes use Arrow's hash lookup. Tuples of
several keys are combined one column at a time into dense ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from quiver.types import ValueType
from quiver_server.offline.columns import compatible

IntArray = npt.NDArray[np.int64]

# A lookup table is used while the key range stays below this many slots per
# history row (plus a floor), so its memory stays proportional to the history.
_LUT_SLOTS_PER_ROW = 4
_LUT_MIN_SLOTS = 1 << 16
_LUT_MAX_SLOTS = 1 << 27


_CANONICAL = {
    ValueType.INT64: pa.int64(), ValueType.INT32: pa.int64(),
    ValueType.STRING: pa.string(), ValueType.BYTES: pa.binary(),
}


# The spine column types a join key accepts. Integer keys are int64 (both widths
# share one key space, as online keys do): uint64 is refused, since its values
# need not fit, and a column that fails half way through a stream is worse than
# one refused when the training set is planned.
_SPINE_KEY_TYPES: dict[ValueType, tuple[pa.DataType, ...]] = {
    ValueType.INT64: (pa.int8(), pa.int16(), pa.int32(), pa.int64(),
                      pa.uint8(), pa.uint16(), pa.uint32()),
    ValueType.STRING: (pa.string(), pa.large_string(), pa.string_view()),
    ValueType.BYTES: (pa.binary(), pa.large_binary(), pa.binary_view()),
}
_SPINE_KEY_TYPES[ValueType.INT32] = _SPINE_KEY_TYPES[ValueType.INT64]


def spine_key_types(value_type: ValueType) -> str:
    """The spine column types a `value_type` join key accepts, for messages."""
    names = [str(t) for t in _SPINE_KEY_TYPES.get(value_type, ())]
    if value_type == ValueType.BYTES:
        names.append("fixed_size_binary")
    return ", ".join(names) + " (or dictionary-encoded)" if names else "none"


def spine_key_accepts(value_type: ValueType, arrow_type: pa.DataType) -> bool:
    """Whether a spine column of `arrow_type` can be joined on a `value_type` key."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if value_type == ValueType.BYTES and pa.types.is_fixed_size_binary(arrow_type):
        return True
    return any(arrow_type.equals(t) for t in _SPINE_KEY_TYPES.get(value_type, ()))


def normalize_key(values: pa.Array | pa.ChunkedArray, value_type: ValueType) -> pa.Array | None:
    """`values` as the canonical Arrow type of a `value_type` key, or None if incompatible.

    Integer keys accept any integer column (values must fit in int64); string
    keys accept string, large_string, string_view and dictionary-encoded strings;
    byte keys the binary equivalents.
    """
    if not compatible(value_type, values.type) or value_type not in _CANONICAL:
        return None
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    # Both integer widths share one key space (as online keys do), so int64.
    return values.cast(_CANONICAL[value_type])


@dataclass(frozen=True)
class _IntColumn:
    kmin: int
    kmax: int
    lut: npt.NDArray[np.int32] | None
    uniq: IntArray | None
    size: int

    @property
    def nbytes(self) -> int:
        return int(self.lut.nbytes if self.lut is not None else 0) + int(
            self.uniq.nbytes if self.uniq is not None else 0
        )

    @classmethod
    def build(cls, values: IntArray) -> tuple[_IntColumn, IntArray]:
        if len(values) == 0:
            return cls(0, -1, None, np.empty(0, np.int64), 0), np.empty(0, np.int64)
        kmin, kmax = int(values.min()), int(values.max())
        slots = kmax - kmin + 1
        if slots <= min(_LUT_MAX_SLOTS, max(_LUT_MIN_SLOTS, _LUT_SLOTS_PER_ROW * len(values))):
            present = np.zeros(slots, dtype=bool)
            offsets = values - kmin
            present[offsets] = True
            ranks = np.cumsum(present, dtype=np.int32) - 1
            lut = np.where(present, ranks, np.int32(-1)).astype(np.int32)
            return cls(kmin, kmax, lut, None, int(ranks[-1]) + 1), lut[offsets].astype(np.int64)
        uniq, inverse = np.unique(values, return_inverse=True)
        return cls(kmin, kmax, None, uniq.astype(np.int64), len(uniq)), inverse.astype(np.int64)

    def encode(self, values: IntArray) -> IntArray:
        inside = (values >= self.kmin) & (values <= self.kmax)
        if self.lut is not None:
            offsets = np.where(inside, values - self.kmin, 0)
            codes = self.lut[offsets].astype(np.int64)
            codes[~inside] = -1
            return codes
        assert self.uniq is not None
        if len(self.uniq) == 0:
            return np.full(len(values), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.uniq, values), len(self.uniq) - 1)
        return np.where(self.uniq[pos] == values, pos, -1).astype(np.int64)


@dataclass(frozen=True)
class _HashColumn:
    dictionary: pa.Array

    @property
    def size(self) -> int:
        return len(self.dictionary)

    @property
    def nbytes(self) -> int:
        return int(self.dictionary.nbytes)

    @classmethod
    def build(cls, values: pa.Array) -> tuple[_HashColumn, IntArray]:
        encoded = pc.dictionary_encode(values)
        codes: IntArray = np.asarray(encoded.indices.cast(pa.int64()).to_numpy(), np.int64)
        return cls(encoded.dictionary), codes

    def encode(self, values: pa.Array) -> IntArray:
        found = pc.index_in(values, value_set=self.dictionary)
        codes: IntArray = np.asarray(found.cast(pa.int64()).fill_null(-1).to_numpy(), np.int64)
        return codes


_Column = _IntColumn | _HashColumn


@dataclass(frozen=True)
class KeyEncoder:
    """Dense ids for the key tuples of one view's history."""

    columns: tuple[_Column, ...]
    # For each column after the first: the sorted distinct combined codes
    # (previous id * size of this column + this column's code).
    steps: tuple[IntArray, ...]
    size: int

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns) + sum(int(s.nbytes) for s in self.steps)

    @classmethod
    def build(cls, keys: Sequence[pa.Array]) -> tuple[KeyEncoder, IntArray]:
        """Encode the history's key columns (normalized, without nulls).

        Returns the encoder and the id of every history row.
        """
        columns: list[_Column] = []
        steps: list[IntArray] = []
        ids: IntArray | None = None
        size = 0
        for values in keys:
            column, codes = _build_column(values)
            columns.append(column)
            if ids is None:
                ids, size = codes, column.size
                continue
            combined = ids * column.size + codes
            uniq, inverse = np.unique(combined, return_inverse=True)
            steps.append(uniq.astype(np.int64))
            ids, size = inverse.astype(np.int64), len(uniq)
        assert ids is not None, "a view has at least one join key"
        return cls(tuple(columns), tuple(steps), size), ids

    def encode(self, keys: Sequence[pa.Array]) -> IntArray:
        """Ids of spine key tuples (normalized); -1 for tuples the history lacks or nulls."""
        ids: IntArray | None = None
        for i, (column, values) in enumerate(zip(self.columns, keys, strict=True)):
            valid = _valid(values)
            if isinstance(column, _IntColumn):
                codes = column.encode(values.fill_null(0).to_numpy())
            else:
                codes = column.encode(values)
            if valid is not None:
                codes = np.where(valid, codes, -1)
            if ids is None:
                ids = codes
                continue
            step = self.steps[i - 1]
            missing = (ids < 0) | (codes < 0)
            combined = ids * column.size + codes
            if len(step) == 0:
                ids = np.full(len(codes), -1, np.int64)
                continue
            pos = np.minimum(np.searchsorted(step, combined), len(step) - 1)
            ids = np.where((step[pos] == combined) & ~missing, pos, -1).astype(np.int64)
        assert ids is not None
        return ids


def _build_column(values: pa.Array) -> tuple[_Column, IntArray]:
    if pa.types.is_integer(values.type):
        return _IntColumn.build(values.to_numpy())
    return _HashColumn.build(values)


def _valid(values: pa.Array) -> npt.NDArray[np.bool_] | None:
    if values.null_count == 0:
        return None
    result: npt.NDArray[np.bool_] = values.is_valid().to_numpy(zero_copy_only=False)
    return result
