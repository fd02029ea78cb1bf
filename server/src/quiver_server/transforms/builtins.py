"""The transform kernels: fit on a training-set column, apply to Arrow arrays.

Both paths call `BoundTransform.apply` on Arrow arrays, with the same Arrow
(or NumPy) calls in the same order, so a value is transformed bit for bit the
same in a training set and an online answer. Parameters are Arrow arrays
(`Params`), stored in the registry as typed columns, so floats round-trip
exactly.

Results, documented in `quiver.transforms`: null in, null out for every
kernel; scalers compute ``(x - center) / scale`` with NaN propagating and a
zero or non-finite spread replaced by 1; encoders map unseen values to -1
(label) or all-false (one-hot); bucketize maps NaN to null.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from quiver import ValueType
from quiver.errors import FailedPreconditionError
from quiver.transforms import CUSTOM, Transform

Params = dict[str, pa.Array]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

NUMERIC = (ValueType.INT64, ValueType.INT32, ValueType.FLOAT64, ValueType.FLOAT32)
CATEGORICAL = (ValueType.STRING, ValueType.INT64, ValueType.INT32, ValueType.BOOL, ValueType.BYTES)
MAX_ONE_HOT_CATEGORIES = 1000
_F64 = pa.float64()
_I64 = pa.int64()
_NUMPY_TYPES = {
    pa.float64().id: np.float64, pa.float32().id: np.float32, pa.int64().id: np.int64,
    pa.int32().id: np.int32,
}
NUMPY_TYPES = {
    ValueType.FLOAT64: np.float64, ValueType.FLOAT32: np.float32, ValueType.INT64: np.int64,
    ValueType.INT32: np.int32,
}


@dataclass(frozen=True)
class BoundTransform:
    """A transform with its parameters, ready to apply.

    Attributes:
        outputs: (name suffix, type) of each output column; the suffix is ""
            for the transformed feature itself, ``"__<category>"`` for one-hot.
        apply: Input array (the feature's declared type) to one array per output.
        affine: ``(center, scale)`` of a scaler; the pipeline applies all of a
            selection's scalers in one `affine` call (the same call `apply`
            makes for one), so a lookup pays two NumPy calls for all of them.
    """

    outputs: tuple[tuple[str, ValueType], ...]
    apply: Callable[[pa.Array], list[pa.Array]]
    affine: tuple[float, float] | None = None


@dataclass(frozen=True)
class Numbers:
    """A numeric column as NumPy: values in their own dtype, and a null mask.

    Scalers read and write this form, so a lookup can hand them the values it
    read without building Arrow arrays first; callers convert at the edges.

    Attributes:
        values: The values (anything under a null).
        nulls: True where null; None when nothing is.
    """

    values: npt.NDArray[Any]
    nulls: BoolArray | None

    @classmethod
    def of(cls, array: pa.Array | pa.ChunkedArray) -> Numbers:
        """A numeric Arrow array's values, read from its data buffer.

        Read the same way whether or not the array has nulls, so a value
        converts identically in a one-row lookup and a training batch.
        """
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        dtype = _NUMPY_TYPES[array.type.id]
        buffer = array.buffers()[1]
        if buffer is None or len(array) == 0:  # nothing but nulls may come without data
            values = np.zeros(len(array), dtype)
        else:
            values = np.frombuffer(buffer, dtype, len(array) + array.offset)[array.offset:]
        nulls = None
        if array.null_count:
            nulls = np.asarray(array.is_null().to_numpy(zero_copy_only=False), bool)
        return cls(values, nulls)

    def to_arrow(self) -> pa.Array:
        return pa.array(self.values, mask=self.nulls)


@dataclass(frozen=True)
class Matrix:
    """Numeric columns of one length as the rows of one float64 matrix.

    The scalers' input and output form: a lookup builds it from the values it
    read in one NumPy conversion (`serving.online_transform.scaler_matrix`), a
    training batch from Arrow arrays (`stack`); `affine` works on it in place
    either way.

    Attributes:
        values: k x n float64, row i the i-th column (integers converted to
            the nearest float64, float32 widened exactly).
        nulls: Per row, True where null; None when nothing is.
    """

    values: FloatArray
    nulls: Sequence[BoolArray | None]

    @classmethod
    def stack(cls, columns: Sequence[Numbers]) -> Matrix:
        """Columns of one length as rows, each converted from its own dtype."""
        values = np.empty((len(columns), len(columns[0].values)), np.float64)
        for i, column in enumerate(columns):
            values[i] = column.values
        return cls(values, [column.nulls for column in columns])

    def rows(self) -> list[Numbers]:
        return [Numbers(self.values[i], nulls) for i, nulls in enumerate(self.nulls)]


def affine(
    inputs: Sequence[Numbers] | Matrix, parameters: Sequence[tuple[float, float]] | FloatArray
) -> list[Numbers]:
    """``(x - center) / scale`` of every input, in one pass over all of them.

    The inputs (all of one length) are the rows of one float64 matrix
    (`Matrix`; a sequence of columns is stacked first), computed in place with
    one NumPy subtract and one divide against the centers and scales.
    Subtraction and division are correctly rounded IEEE operations in every
    NumPy loop (SIMD or not), so element by element this is ``(x - c) / s``
    exactly, whatever the grouping or batch length; nulls stay null, NaN
    stays NaN.

    Args:
        inputs: Numeric columns of one length, or a `Matrix` of them (overwritten).
        parameters: ``(center, scale)`` per input (or a k x 2 float64 array of them).
    """
    matrix = inputs if isinstance(inputs, Matrix) else Matrix.stack(inputs)
    table = np.asarray(parameters, np.float64).reshape(-1, 2)
    with np.errstate(all="ignore"):
        np.subtract(matrix.values, table[:, :1], out=matrix.values)
        np.divide(matrix.values, table[:, 1:], out=matrix.values)
    return matrix.rows()


def float_values(array: pa.Array) -> tuple[FloatArray, BoolArray | None]:
    """`Numbers.of` converted to float64 (integers to the nearest float64)."""
    numbers = Numbers.of(array)
    return numbers.values.astype(np.float64, copy=False), numbers.nulls


def input_types(kind: str) -> tuple[ValueType, ...] | None:
    """Input types a built-in accepts; None for any (custom)."""
    if kind in ("label_encoder", "one_hot_encoder"):
        return CATEGORICAL
    if kind == CUSTOM:
        return None
    return NUMERIC


def fit(transform: Transform, values: pa.ChunkedArray) -> Params:
    """Fit a built-in on a training-set column (custom transforms fit in `custom`)."""
    if transform.kind in _SCALERS:
        center, scale, count = _SCALERS[transform.kind](_finite(values))
        return {
            "center": pa.array([center], _F64),
            "scale": pa.array([scale], _F64),
            "count": pa.array([count], _I64),
        }
    if transform.kind in ("label_encoder", "one_hot_encoder"):
        vocabulary = _vocabulary(values)
        if transform.kind == "one_hot_encoder" and len(vocabulary) > MAX_ONE_HOT_CATEGORIES:
            raise FailedPreconditionError(
                f"one_hot_encoder of {transform.feature!r}: the training set has "
                f"{len(vocabulary):,} distinct values, more than {MAX_ONE_HOT_CATEGORIES:,} "
                f"columns; use label_encoder",
                reason="TOO_MANY_CATEGORIES", metadata={"feature": transform.feature},
            )
        return {"vocabulary": vocabulary}
    if transform.kind == "bucketize":
        finite = _finite(values)
        if len(finite) == 0:
            return {"boundaries": pa.array([], _F64)}
        quantiles = np.arange(1, transform.num_buckets) / transform.num_buckets
        return {"boundaries": pa.array(np.unique(np.quantile(finite, quantiles)), _F64)}
    return {}


def bind(transform: Transform, params: Params) -> BoundTransform:
    """A built-in with its parameters (declared or fitted)."""
    kind = transform.kind
    if kind in _SCALERS:
        pair = (float(params["center"][0].as_py()), float(params["scale"][0].as_py()))
        return BoundTransform(
            (("", ValueType.FLOAT64),),
            lambda values: [affine([Numbers.of(values)], [pair])[0].to_arrow()],
            pair,
        )
    if kind == "log1p":
        return BoundTransform(
            (("", ValueType.FLOAT64),), lambda values: [pc.log1p(_as_float(values))]
        )
    if kind == "bucketize":
        edges = (
            np.asarray(transform.boundaries, np.float64) if transform.boundaries
            else params["boundaries"].to_numpy()
        )
        return BoundTransform((("", ValueType.INT64),), lambda values: [_bucketize(values, edges)])
    vocabulary = params["vocabulary"]
    if kind == "label_encoder":
        return BoundTransform(
            (("", ValueType.INT64),), lambda values: [_label(values, vocabulary)]
        )
    categories = [pa.scalar(v, vocabulary.type) for v in vocabulary.to_pylist()]
    return BoundTransform(
        tuple((f"__{_label_text(v)}", ValueType.BOOL) for v in vocabulary.to_pylist()),
        lambda values: [pc.equal(_as_key(values), c) for c in categories],
    )


def _as_float(values: pa.Array) -> pa.Array:
    # Integers beyond 2**53 round to the nearest float64 (a safe cast refuses them).
    return values if values.type == _F64 else values.cast(_F64, safe=False)


def _as_key(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # Both integer widths share one vocabulary type.
    return values.cast(_I64) if values.type == pa.int32() else values


def _finite(values: pa.ChunkedArray) -> FloatArray:
    """The finite values of a column as float64 (nulls, NaN and infinities dropped)."""
    kept = []
    for chunk in values.chunks:
        data, nulls = float_values(chunk)
        keep = np.isfinite(data) if nulls is None else np.isfinite(data) & ~nulls
        kept.append(data[keep])
    result: FloatArray = np.concatenate(kept) if kept else np.empty(0, np.float64)
    return result


def _spread(center: float, spread: float, count: int) -> tuple[float, float, int]:
    center = center if np.isfinite(center) else 0.0
    scale = spread if np.isfinite(spread) and spread > 0 else 1.0
    return float(center), float(scale), count


def _standard(data: FloatArray) -> tuple[float, float, int]:
    if len(data) == 0:
        return 0.0, 1.0, 0
    with np.errstate(over="ignore", invalid="ignore"):
        return _spread(float(np.mean(data)), float(np.std(data)), len(data))


def _min_max(data: FloatArray) -> tuple[float, float, int]:
    if len(data) == 0:
        return 0.0, 1.0, 0
    low, high = float(np.min(data)), float(np.max(data))
    with np.errstate(over="ignore"):
        return _spread(low, high - low, len(data))


def _robust(data: FloatArray) -> tuple[float, float, int]:
    if len(data) == 0:
        return 0.0, 1.0, 0
    with np.errstate(over="ignore", invalid="ignore"):
        q25, median, q75 = (float(q) for q in np.quantile(data, [0.25, 0.5, 0.75]))
        return _spread(median, q75 - q25, len(data))


_SCALERS: dict[str, Callable[[FloatArray], tuple[float, float, int]]] = {
    "standard_scaler": _standard, "min_max_scaler": _min_max, "robust_scaler": _robust,
}


def _vocabulary(values: pa.ChunkedArray) -> pa.Array:
    distinct = pc.unique(_as_key(values)).drop_null()
    return distinct.take(pc.sort_indices(distinct))


def _label(values: pa.Array, vocabulary: pa.Array) -> pa.Array:
    codes = pc.index_in(_as_key(values), value_set=vocabulary).cast(_I64)
    # index_in gives null for a null value and for an unseen one; unseen is -1.
    unseen = pc.and_(pc.is_null(codes), pc.is_valid(values))
    return pc.if_else(unseen, pa.scalar(-1, _I64), codes)


def _bucketize(values: pa.Array, edges: FloatArray) -> pa.Array:
    data, nulls = float_values(values)
    index = np.searchsorted(edges, data, side="right").astype(np.int64)
    missing = np.isnan(data) if nulls is None else np.isnan(data) | nulls
    return pa.array(index, _I64, mask=missing)


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def params_to_python(params: Mapping[str, pa.Array]) -> dict[str, Any]:
    """Scalar parameters (one-element arrays) as Python values, for custom functions."""
    return {name: values[0].as_py() for name, values in params.items()}


def scalar_params(declared: Mapping[str, ValueType], values: Mapping[str, Any]) -> Params:
    """Declared scalar parameters as one-element arrays of their declared types."""
    return {name: pa.array([values[name]], declared[name].arrow_type) for name in declared}


def describe(params: Mapping[str, pa.Array]) -> dict[str, Sequence[Any]]:
    """Parameters as lists of Python values, for people."""
    return {name: values.to_pylist() for name, values in params.items()}
