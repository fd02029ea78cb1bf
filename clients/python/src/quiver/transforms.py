"""Model-dependent transforms of a feature service's features.

A transform reshapes one feature the same way in training sets and online
lookups, with parameters fitted once on a training set and stored in the
registry as a numbered, immutable parameter set::

    from quiver import FeatureService, transforms as T

    fraud_scaled = FeatureService(
        name="fraud_scaled",
        features=[user_transaction_stats, txn_amount_features],
        transforms=[
            T.standard_scaler("user_transaction_stats:txn_amount_sum_24h"),
            T.one_hot_encoder("user_profile:country"),
            T.bucketize("user_profile:age", boundaries=[25, 40, 65]),
        ],
    )

Built-ins (null in, null out for every one of them):

- ``standard_scaler``: ``(x - mean) / std`` (population std); ``min_max_scaler``:
  ``(x - min) / (max - min)``; ``robust_scaler``: ``(x - median) / (q75 - q25)``.
  Fitted on the finite values (NaN and infinities are skipped); a zero spread
  (zero variance) divides by 1, so every value becomes ``x - center``; no
  finite values at all gives center 0 and scale 1. NaN stays NaN. Float64 out.
- ``label_encoder``: the index of the value in the sorted distinct values of
  the training set; a value the fit never saw is -1. Int64 out.
- ``one_hot_encoder``: one Bool column per training-set category, named
  ``"<feature>__<category>"``; an unseen value is false in every column.
- ``log1p``: ``ln(1 + x)`` (x = -1 gives -inf, x < -1 NaN). Not fitted.
- ``bucketize``: the number of boundaries ``<= x`` (0 .. len(boundaries)), with
  declared ``boundaries`` or ``num_buckets`` quantile boundaries fitted on the
  training set; NaN gives null. Int64 out.

A ``custom`` transform names its functions by import path (never pickled) and
declares its parameters; see `custom`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from quiver.errors import DefinitionError
from quiver.types import ValueType

__all__ = [
    "BUILTIN_KINDS",
    "CustomTransform",
    "Transform",
    "bucketize",
    "check_import_path",
    "custom",
    "label_encoder",
    "log1p",
    "min_max_scaler",
    "one_hot_encoder",
    "robust_scaler",
    "standard_scaler",
]

BUILTIN_KINDS = (
    "standard_scaler", "min_max_scaler", "robust_scaler", "label_encoder", "one_hot_encoder",
    "log1p", "bucketize",
)
CUSTOM = "custom"
# Kinds whose parameters come from a training set.
_FITTED_KINDS = {"standard_scaler", "min_max_scaler", "robust_scaler", "label_encoder",
                 "one_hot_encoder"}
PARAMETER_TYPES = (ValueType.FLOAT64, ValueType.INT64, ValueType.STRING, ValueType.BOOL)
_PYTHON_TYPES: dict[ValueType, type] = {
    ValueType.FLOAT64: float, ValueType.INT64: int, ValueType.STRING: str, ValueType.BOOL: bool,
}
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def check_import_path(what: str, path: object) -> str:
    """Return `path` if it looks like ``"package.module:function"``, else raise DefinitionError."""
    if not isinstance(path, str) or not _IMPORT_PATH.match(path):
        raise DefinitionError(
            f"{what}: {path!r} is not an import path; write 'module:function' "
            f"(e.g. 'fraud_transforms:amount_ratio'), a module-level function in the feature "
            f"repo or an installed package"
        )
    return path


@dataclass(frozen=True)
class CustomTransform:
    """A user transform: functions by import path, declared scalar parameters.

    Attributes:
        function: ``apply(values: pyarrow.Array, params: dict) -> pyarrow.Array``,
            returning one value per input value, of type `output`.
        output: The output type.
        parameters: Declared parameter names and types (Float64, Int64,
            String or Bool).
        fit: Optional ``fit(values: pyarrow.ChunkedArray) -> dict`` giving every
            declared parameter from the training set's column.
        values: Fixed parameter values when there is no `fit`.
    """

    function: str
    output: ValueType
    parameters: Mapping[str, ValueType] = field(default_factory=dict)
    fit: str | None = None
    values: Mapping[str, float | int | str | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_import_path("custom transform function", self.function)
        if self.fit is not None:
            check_import_path("custom transform fit", self.fit)
        try:
            object.__setattr__(self, "output", ValueType.parse(self.output))
            declared = {name: ValueType.parse(t) for name, t in dict(self.parameters).items()}
        except ValueError as exc:
            raise DefinitionError(f"custom transform {self.function!r}: {exc}") from None
        for name, value_type in declared.items():
            if value_type not in PARAMETER_TYPES:
                allowed = ", ".join(t.name.lower() for t in PARAMETER_TYPES)
                raise DefinitionError(
                    f"custom transform {self.function!r}: parameter {name!r} is "
                    f"{value_type.name.lower()}; allowed: {allowed}"
                )
        object.__setattr__(self, "parameters", declared)
        values = dict(self.values)
        if self.fit is not None and values:
            raise DefinitionError(
                f"custom transform {self.function!r}: give either fit or values, not both"
            )
        if self.fit is None:
            check_parameter_values(f"custom transform {self.function!r}", declared, values)
        object.__setattr__(self, "values", values)

    def __hash__(self) -> int:
        return hash((self.function, self.fit))


def check_parameter_values(
    where: str, declared: Mapping[str, ValueType], values: Mapping[str, object]
) -> None:
    """Every declared parameter given once, of its declared type; nothing else."""
    missing = sorted(set(declared) - set(values))
    extra = sorted(set(values) - set(declared))
    if missing or extra:
        raise DefinitionError(
            f"{where}: parameters must be exactly the declared ones "
            f"({', '.join(sorted(declared)) or 'none'}); missing: {missing}, unexpected: {extra}"
        )
    for name, value in values.items():
        expected = _PYTHON_TYPES[declared[name]]
        ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise DefinitionError(
                f"{where}: parameter {name!r} is declared {declared[name].name.lower()}, "
                f"got {value!r}"
            )


@dataclass(frozen=True)
class Transform:
    """One transform of one feature of a feature service.

    Build it with the functions of this module (`standard_scaler`, ...).

    Attributes:
        feature: The feature it reads, ``"feature_view:feature"`` (an
            on-demand view's features too).
        kind: A built-in's name or ``"custom"``.
        boundaries: bucketize's declared boundaries.
        num_buckets: bucketize's number of fitted quantile buckets.
        custom: The custom transform, for kind ``"custom"``.
    """

    feature: str
    kind: str
    boundaries: tuple[float, ...] = ()
    num_buckets: int = 0
    custom: CustomTransform | None = None

    def __post_init__(self) -> None:
        view, sep, name = self.feature.partition(":") if isinstance(self.feature, str) else ("", "", "")
        if not sep or not view or not name or ":" in name:
            raise DefinitionError(
                f"{self.kind} transform: feature {self.feature!r} must look like "
                f"'feature_view:feature'"
            )
        if self.kind not in (*BUILTIN_KINDS, CUSTOM):
            raise DefinitionError(
                f"transform of {self.feature!r}: unknown kind {self.kind!r}; allowed: "
                f"{', '.join((*BUILTIN_KINDS, CUSTOM))}"
            )
        if (self.kind == CUSTOM) != (self.custom is not None):
            raise DefinitionError(f"transform of {self.feature!r}: only kind 'custom' takes custom")
        object.__setattr__(self, "boundaries", tuple(float(b) for b in self.boundaries))
        if self.kind == "bucketize":
            self._check_buckets()
        elif self.boundaries or self.num_buckets:
            raise DefinitionError(
                f"{self.kind} transform of {self.feature!r}: only bucketize takes boundaries "
                f"or num_buckets"
            )

    def _check_buckets(self) -> None:
        where = f"bucketize transform of {self.feature!r}"
        if bool(self.boundaries) == bool(self.num_buckets):
            raise DefinitionError(f"{where}: give either boundaries=[...] or num_buckets=N")
        if self.num_buckets and (isinstance(self.num_buckets, bool) or self.num_buckets < 2):
            raise DefinitionError(f"{where}: num_buckets must be an integer >= 2")
        edges = self.boundaries
        if any(not math.isfinite(b) for b in edges) or any(
            a >= b for a, b in itertools.pairwise(edges)
        ):
            raise DefinitionError(f"{where}: boundaries must be finite and strictly increasing")

    @property
    def needs_fit(self) -> bool:
        """Whether its parameters come from a training set (`quiver fit`)."""
        if self.kind == "bucketize":
            return self.num_buckets > 0
        if self.kind == CUSTOM:
            return self.custom is not None and self.custom.fit is not None
        return self.kind in _FITTED_KINDS


def standard_scaler(feature: str) -> Transform:
    """``(x - mean) / std``, fitted on the training set; Float64 out."""
    return Transform(feature, "standard_scaler")


def min_max_scaler(feature: str) -> Transform:
    """``(x - min) / (max - min)``, fitted on the training set; Float64 out."""
    return Transform(feature, "min_max_scaler")


def robust_scaler(feature: str) -> Transform:
    """``(x - median) / (q75 - q25)``, fitted on the training set; Float64 out."""
    return Transform(feature, "robust_scaler")


def label_encoder(feature: str) -> Transform:
    """Index in the training set's sorted distinct values (unseen: -1); Int64 out."""
    return Transform(feature, "label_encoder")


def one_hot_encoder(feature: str) -> Transform:
    """One Bool column per training-set category, ``"<feature>__<category>"``."""
    return Transform(feature, "one_hot_encoder")


def log1p(feature: str) -> Transform:
    """``ln(1 + x)``; not fitted; Float64 out."""
    return Transform(feature, "log1p")


def bucketize(
    feature: str, *, boundaries: Sequence[float] = (), num_buckets: int = 0
) -> Transform:
    """Bucket index: declared `boundaries`, or `num_buckets` fitted quantile buckets."""
    return Transform(feature, "bucketize", boundaries=tuple(boundaries), num_buckets=num_buckets)


def custom(
    feature: str,
    *,
    function: str,
    output: ValueType,
    parameters: Mapping[str, ValueType] | None = None,
    fit: str | None = None,
    values: Mapping[str, float | int | str | bool] | None = None,
) -> Transform:
    """A user transform by import path; see `CustomTransform` for the signatures."""
    spec = CustomTransform(function, output, parameters or {}, fit, values or {})
    return Transform(feature, CUSTOM, custom=spec)
