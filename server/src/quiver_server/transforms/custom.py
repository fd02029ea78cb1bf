"""Custom transforms: user functions by import path, with declared parameters."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from quiver.errors import DefinitionError
from quiver.transforms import Transform, check_parameter_values
from quiver_server.transforms.builtins import (
    BoundTransform,
    Params,
    params_to_python,
    scalar_params,
)
from quiver_server.transforms.functions import FunctionLoader
from quiver_server.transforms.usercode import UserCode


def user_code(service: str, transform: Transform) -> UserCode:
    return UserCode(
        f"custom transform of {transform.feature!r} in feature service {service!r}",
        f"feature_service.transforms.{transform.feature}",
        {"feature_service": service, "feature": transform.feature},
    )


def fit(
    service: str, transform: Transform, values: pa.ChunkedArray, loader: FunctionLoader,
    hashes: Mapping[str, str],
) -> Params:
    """Run the transform's fit function; its answer must give every declared parameter."""
    spec = transform.custom
    assert spec is not None and spec.fit is not None
    code = user_code(service, transform)
    function = loader.load(spec.fit, hashes.get(spec.fit, ""), code.what)
    result = code.call(function, values)
    if not isinstance(result, Mapping):
        raise code.error(f"fit returned {type(result).__name__}; return a dict of parameters")
    try:
        check_parameter_values(code.what, spec.parameters, result)
    except DefinitionError as exc:
        raise code.error(f"fit returned bad parameters: {exc.message}") from None
    return scalar_params(spec.parameters, result)


def bind(
    service: str, transform: Transform, params: Params, loader: FunctionLoader,
    hashes: Mapping[str, str],
) -> BoundTransform:
    """The transform with its fitted (or fixed) parameters."""
    spec = transform.custom
    assert spec is not None
    code = user_code(service, transform)
    function = loader.load(spec.function, hashes.get(spec.function, ""), code.what)
    # Fixed values go through their declared types too (an int given for a float).
    values = params_to_python(params if spec.fit else scalar_params(spec.parameters, spec.values))
    name = transform.feature

    def apply(array: pa.Array) -> list[pa.Array]:
        result = code.call(function, array, dict(values))
        return [code.array(result, name, spec.output, len(array))]

    return BoundTransform((("", spec.output),), apply)
