"""The built-in transforms' documented results: nulls, NaN, unseen values, zero spread."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from quiver import ValueType
from quiver import transforms as T
from quiver.errors import FailedPreconditionError
from quiver_server.transforms import builtins

NAN = float("nan")
F64 = pa.float64()


def fit_apply(transform: T.Transform, fit_on: list[object], apply_to: list[object],
              arrow_type: pa.DataType = F64) -> list[list[object]]:
    params = builtins.fit(transform, pa.chunked_array([pa.array(fit_on, arrow_type)]))
    bound = builtins.bind(transform, params)
    return [a.to_pylist() for a in bound.apply(pa.array(apply_to, arrow_type))]


def same(left: list[object], right: list[object]) -> bool:
    """Equal, with NaN equal to NaN."""
    return len(left) == len(right) and all(
        (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b
        for a, b in zip(left, right, strict=True)
    )


def test_standard_scaler_skips_non_finite_values_when_fitting() -> None:
    [out] = fit_apply(T.standard_scaler("v:x"), [1.0, 3.0, None, NAN, math.inf], [1.0, None, NAN, 5.0])
    assert same(out, [-1.0, None, NAN, 3.0])


def test_scalers_with_zero_spread_subtract_the_center() -> None:
    for transform in (T.standard_scaler("v:x"), T.min_max_scaler("v:x"), T.robust_scaler("v:x")):
        [out] = fit_apply(transform, [4.0, 4.0, 4.0], [4.0, 6.0, None])
        assert out == [0.0, 2.0, None], transform.kind


def test_scalers_with_nothing_to_fit_are_the_identity() -> None:
    [out] = fit_apply(T.standard_scaler("v:x"), [None, NAN], [2.5, None])
    assert out == [2.5, None]


def test_min_max_and_robust_scalers() -> None:
    [out] = fit_apply(T.min_max_scaler("v:x"), [2.0, 4.0, 10.0], [2.0, 10.0, 6.0])
    assert out == [0.0, 1.0, 0.5]
    [out] = fit_apply(T.robust_scaler("v:x"), [1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 5.0])
    assert out == [0.0, 1.0]  # median 3, IQR 4 - 2


def test_integer_inputs_are_scaled_as_float64() -> None:
    [out] = fit_apply(T.standard_scaler("v:x"), [1, 3], [2, None], pa.int64())
    assert out == [0.0, None]
    # Beyond 2**53 an integer rounds to the nearest float64 rather than failing.
    [out] = fit_apply(T.min_max_scaler("v:x"), [0, 2**63 - 1], [2**53 + 1], pa.int64())
    assert out == [float(2**53) / float(2**63)]


def test_label_encoder_maps_unseen_values_to_minus_one_and_keeps_nulls() -> None:
    [out] = fit_apply(T.label_encoder("v:x"), ["b", "a", None, "b"], ["a", "b", "z", None],
                      pa.string())
    assert out == [0, 1, -1, None]


def test_one_hot_encoder_columns_follow_the_sorted_categories() -> None:
    transform = T.one_hot_encoder("v:x")
    params = builtins.fit(transform, pa.chunked_array([pa.array([3, 1, None, 3], pa.int32())]))
    bound = builtins.bind(transform, params)
    assert bound.outputs == (("__1", ValueType.BOOL), ("__3", ValueType.BOOL))
    columns = [a.to_pylist() for a in bound.apply(pa.array([1, 7, None], pa.int32()))]
    assert columns == [[True, False, None], [False, False, None]]  # 7 unseen: all false


def test_one_hot_encoder_refuses_too_many_categories() -> None:
    values = pa.chunked_array([pa.array([str(i) for i in range(builtins.MAX_ONE_HOT_CATEGORIES + 1)])])
    with pytest.raises(FailedPreconditionError, match="use label_encoder"):
        builtins.fit(T.one_hot_encoder("v:x"), values)


def test_log1p_edges() -> None:
    [out] = fit_apply(T.log1p("v:x"), [], [0.0, -1.0, -2.0, None, NAN])
    assert same(out, [0.0, -math.inf, NAN, None, NAN])


def test_bucketize_with_declared_and_fitted_boundaries() -> None:
    [out] = fit_apply(T.bucketize("v:x", boundaries=[0, 10]), [], [-5.0, 0.0, 9.9, 10.0, NAN, None])
    assert out == [0, 1, 1, 2, None, None]
    transform = T.bucketize("v:x", num_buckets=4)
    params = builtins.fit(transform, pa.chunked_array([pa.array([1.0, 2.0, 3.0, 4.0, 5.0])]))
    assert params["boundaries"].to_pylist() == [2.0, 3.0, 4.0]
    zero_spread = builtins.fit(transform, pa.chunked_array([pa.array([7.0, 7.0])]))
    assert zero_spread["boundaries"].to_pylist() == [7.0]


def test_transform_definitions_refuse_bad_options() -> None:
    from quiver.errors import DefinitionError

    with pytest.raises(DefinitionError, match="strictly increasing"):
        T.bucketize("v:x", boundaries=[2, 1])
    with pytest.raises(DefinitionError, match="either boundaries"):
        T.bucketize("v:x")
    with pytest.raises(DefinitionError, match="'feature_view:feature'"):
        T.standard_scaler("x")
    with pytest.raises(DefinitionError, match="not an import path"):
        T.custom("v:x", function="no_colon", output=ValueType.FLOAT64)
    with pytest.raises(DefinitionError, match="missing: \\['lo'\\]"):
        T.custom("v:x", function="m:f", output=ValueType.FLOAT64,
                 parameters={"lo": ValueType.FLOAT64})
    with pytest.raises(DefinitionError, match="declared string"):
        T.custom("v:x", function="m:f", output=ValueType.FLOAT64,
                 parameters={"name": ValueType.STRING}, values={"name": 3})
