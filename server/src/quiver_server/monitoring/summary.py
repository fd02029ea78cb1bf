"""`FeatureSummary`: the mergeable profile of one feature's values.

Counts add; moments (min, max, mean and Welford's M2) combine exactly with
Chan's parallel formula; numbers go into a DataSketches KLL quantile sketch and
strings and booleans into a frequent-items sketch, both of which merge with
bounded error. So a summary built per worker, per batch or per partition can
be merged in any order into the summary of all of them.

What feeds what, by feature type:

- int64, int32, float64, float32: moments and the KLL sketch;
- timestamp: the same, as seconds since the epoch;
- bool: moments as 0/1 and the frequent-items sketch ("true"/"false");
- string: the frequent-items sketch;
- bytes: counts only.

NaN is a value for the counts but is left out of the moments and sketches.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import datasketches
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from quiver import ValueType
from quiver.monitoring.v1 import profile_pb2 as pb

__all__ = ["CATEGORICAL", "NUMERIC", "FeatureSummary", "kind_of"]

NUMERIC = "numeric"
CATEGORICAL = "categorical"

# KLL accuracy parameter: about 0.9% normalized rank error, at most ~10 KB serialized.
KLL_K = 400
# Frequent-items map of 2^LG_MAX_K counters (at most 0.75 * 2^LG_MAX_K items kept).
LG_MAX_K = 7
# Distinct strings fed per batch: past this, the most frequent ones; the rest
# still count in `sketched_count`, so they show up as "other" in drift.
MAX_DISTINCT_PER_BATCH = 10_000

_NUMERIC_TYPES = frozenset({
    ValueType.INT64, ValueType.INT32, ValueType.FLOAT64, ValueType.FLOAT32, ValueType.TIMESTAMP,
})


def kind_of(dtype: ValueType) -> str:
    """numeric, categorical, or "" (counts only) for a feature type."""
    if dtype in _NUMERIC_TYPES:
        return NUMERIC
    if dtype in (ValueType.STRING, ValueType.BOOL):
        return CATEGORICAL
    return ""


@dataclass
class FeatureSummary:
    """Counts, moments and sketches of one feature; see the module docstring."""

    name: str
    dtype: ValueType
    count: int = 0
    null_count: int = 0
    numeric_count: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0
    sketched_count: int = 0
    kll: datasketches.kll_doubles_sketch | None = field(default=None, repr=False)
    items: datasketches.frequent_strings_sketch | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return kind_of(self.dtype)

    @property
    def null_rate(self) -> float:
        return self.null_count / self.count if self.count else 0.0

    @property
    def variance(self) -> float:
        """Sample variance of the numeric values (0 with fewer than two)."""
        return self.m2 / (self.numeric_count - 1) if self.numeric_count > 1 else 0.0

    # -- feeding -----------------------------------------------------------------

    def update(self, values: pa.Array | pa.ChunkedArray, sample_step: int = 1) -> None:
        """Add a column of values (nulls included).

        Args:
            values: The feature's values as Arrow; timestamps may be Arrow
                timestamps or int64 microseconds since the epoch.
            sample_step: Take moments and the quantile sketch of numbers from
                every `sample_step`-th value only (a uniform sample); counts,
                nulls and category counts stay exact. Large batch jobs,
                training sets and history scans use it to bound the cost.
        """
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
        nulls = values.null_count
        self.count += len(values)
        self.null_count += nulls
        present = len(values) - nulls
        if not present:
            return
        if self.dtype == ValueType.BOOL:
            true = int(pc.sum(values).as_py() or 0)
            low, high = (0.0 if true < present else 1.0), (1.0 if true else 0.0)
            # Sum of squared deviations of 0/1 values: n p (1 - p).
            self._combine_moments(present, low, high, true / present,
                                  true * (present - true) / present)
            self._count_items([("true", true), ("false", present - true)], present)
        elif self.kind == NUMERIC:
            if sample_step > 1:
                # Only the sampled values are converted, not the whole column.
                values = values.take(_stride(len(values), sample_step))
            # Nulls become NaN here, so no copy of the column is needed to drop them.
            numbers = _as_float64(values, self.dtype)
            if values.null_count or np.isnan(numbers).any():
                numbers = numbers[~np.isnan(numbers)]
            self._add_moments(numbers)
            self._sketch_numbers(numbers)
        elif self.kind == CATEGORICAL:
            self._sketch_items(values, present)

    def update_counts(self, count: int, nulls: int) -> None:
        """Count values that carry no usable value (served NOT_FOUND, ...) as nulls."""
        self.count += count
        self.null_count += nulls

    def _add_moments(self, numbers: np.ndarray) -> None:
        n = len(numbers)
        if not n:
            return
        mean = float(numbers.mean())
        centered = numbers - mean
        # In place and without BLAS: np.dot would start a BLAS thread pool, which on a
        # busy machine spins for far longer than this pass takes.
        m2 = float(np.square(centered, out=centered).sum())
        self._combine_moments(n, float(numbers.min()), float(numbers.max()), mean, m2)

    def _combine_moments(self, n: int, low: float, high: float, mean: float, m2: float) -> None:
        total = self.numeric_count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.numeric_count * n / total
        self.mean += delta * n / total
        self.numeric_count = total
        self.minimum = min(self.minimum, low)
        self.maximum = max(self.maximum, high)

    def _sketch_numbers(self, numbers: np.ndarray) -> None:
        if self.kll is None:
            self.kll = datasketches.kll_doubles_sketch(KLL_K)
        # The binding takes a writable C-contiguous float64 array; NaN is ignored.
        self.kll.update(np.require(numbers, np.float64, ["C", "W"]))
        self.sketched_count += len(numbers)

    def _sketch_items(self, values: pa.Array, present: int) -> None:
        counts = pc.value_counts(values)
        if len(counts) > MAX_DISTINCT_PER_BATCH:
            # select_k takes the counts array itself (a struct array is not sortable).
            top = pc.select_k_unstable(
                counts.field("counts"), MAX_DISTINCT_PER_BATCH, sort_keys=[("counts", "descending")]
            )
            counts = counts.take(top)
        pairs = zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
        # value_counts lists nulls as a value of their own: not a category.
        self._count_items(((v, n) for v, n in pairs if v is not None), present)

    def _count_items(self, pairs: Iterable[tuple[str, int]], present: int) -> None:
        if self.items is None:
            self.items = datasketches.frequent_strings_sketch(LG_MAX_K)
        sketch = self.items
        for value, weight in pairs:
            if weight:
                sketch.update(value, weight)
        self.sketched_count += present

    # -- merging -----------------------------------------------------------------

    def merge(self, other: FeatureSummary) -> None:
        """Fold `other` (the same feature) into this summary."""
        self.count += other.count
        self.null_count += other.null_count
        if other.numeric_count:
            self._combine_moments(
                other.numeric_count, other.minimum, other.maximum, other.mean, other.m2
            )
        self.sketched_count += other.sketched_count
        if other.kll is not None:
            if self.kll is None:
                self.kll = datasketches.kll_doubles_sketch(KLL_K)
            self.kll.merge(other.kll)
        if other.items is not None:
            if self.items is None:
                self.items = datasketches.frequent_strings_sketch(LG_MAX_K)
            self.items.merge(other.items)

    # -- reading -------------------------------------------------------------------

    def frequencies(self) -> dict[str, float]:
        """Estimated count of each tracked category."""
        if self.items is None or self.items.is_empty():
            return {}
        found = self.items.get_frequent_items(
            datasketches.frequent_items_error_type.NO_FALSE_NEGATIVES, 0
        )
        return {str(item): float(estimate) for item, estimate, _, _ in found}

    # -- protobuf ------------------------------------------------------------------

    def to_proto(self) -> pb.FeatureProfile:
        message = pb.FeatureProfile(
            name=self.name, count=self.count, null_count=self.null_count,
            numeric_count=self.numeric_count, sketched_count=self.sketched_count,
        )
        if self.numeric_count:
            message.min, message.max = self.minimum, self.maximum
            message.mean, message.m2 = self.mean, self.m2
        if self.kll is not None:
            message.kll = self.kll.serialize()
        if self.items is not None:
            message.frequent_items = self.items.serialize()
        return message

    @classmethod
    def from_proto(cls, message: pb.FeatureProfile, dtype: ValueType) -> FeatureSummary:
        """Decode; raises ValueError (or RuntimeError from DataSketches) on a bad sketch."""
        summary = cls(message.name, dtype, message.count, message.null_count,
                      message.numeric_count, sketched_count=message.sketched_count)
        if message.numeric_count:
            summary.minimum, summary.maximum = message.min, message.max
            summary.mean, summary.m2 = message.mean, message.m2
        if message.kll:
            summary.kll = datasketches.kll_doubles_sketch.deserialize(message.kll)
        if message.frequent_items:
            summary.items = datasketches.frequent_strings_sketch.deserialize(
                message.frequent_items
            )
        return summary


@functools.lru_cache(maxsize=64)
def _stride(length: int, step: int) -> pa.Array:
    """Indices of every `step`-th row of `length` (batches repeat their lengths)."""
    return pa.array(np.arange(0, length, step, dtype=np.int64))


def _as_float64(values: pa.Array, dtype: ValueType) -> np.ndarray:
    """Values as float64, NaN for nulls; timestamps in seconds since the epoch."""
    if dtype == ValueType.TIMESTAMP:
        if pa.types.is_timestamp(values.type):
            values = values.cast(pa.timestamp("us", tz=values.type.tz)).cast(pa.int64())
        micros = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
        return np.asarray(micros / 1_000_000.0, dtype=np.float64)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
