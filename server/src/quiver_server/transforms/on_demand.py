"""Running an on-demand view's function over a batch of rows."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from quiver import OnDemandFeatureView
from quiver.errors import FailedPreconditionError
from quiver_server.transforms.functions import AnyFunction
from quiver_server.transforms.usercode import UserCode


class OnDemandRunner:
    """One on-demand view with its loaded function.

    Args:
        view: The definition.
        function: Its function, loaded and checked against the applied source.
    """

    def __init__(self, view: OnDemandFeatureView, function: AnyFunction) -> None:
        if view.mode == "pandas" and importlib.util.find_spec("pandas") is None:
            raise FailedPreconditionError(
                f"on-demand feature view {view.name!r} runs in pandas mode, but pandas is not "
                f"installed here; install quiver-feature-store[pandas]",
                reason="PANDAS_MISSING", metadata={"on_demand_feature_view": view.name},
            )
        self.view = view
        self.function = function
        self.code = UserCode(
            f"on-demand feature view {view.name!r}", f"on_demand_feature_views.{view.name}",
            {"on_demand_feature_view": view.name},
        )
        self._names = view.input_names

    def run(self, inputs: Mapping[str, pa.Array], rows: int) -> list[pa.Array]:
        """The view's features (in schema order) for `rows` rows of inputs.

        `inputs` maps every input name (request field or stored feature) to an
        array of its declared type, nulls where a stored value is missing.

        Raises:
            InvalidArgumentError: the function raised, or returned something
                other than one value of each declared type per row.
        """
        table = pa.RecordBatch.from_arrays([inputs[name] for name in self._names], self._names)
        if self.view.mode == "pandas":
            result = self.code.call(self.function, table.to_pandas())
            columns = self._pandas_columns(result)
        else:
            columns = self._arrow_columns(self.code.call(self.function, table))
        return [
            self.code.array(columns.get(f.name), f.name, f.dtype, rows) for f in self.view.schema
        ]

    def _arrow_columns(self, result: object) -> dict[str, Any]:
        if isinstance(result, pa.Table | pa.RecordBatch):
            return {name: result.column(name) for name in result.column_names}
        if isinstance(result, Mapping):
            return dict(result)
        raise self.code.error(
            f"returned {type(result).__name__}; return a pyarrow Table, RecordBatch or a mapping "
            f"of feature name to pyarrow.Array"
        )

    def _pandas_columns(self, result: object) -> dict[str, Any]:
        if not (hasattr(result, "columns") and hasattr(result, "__getitem__")):
            raise self.code.error(f"returned {type(result).__name__}; return a pandas DataFrame")
        columns: dict[str, Any] = {}
        for field in self.view.schema:
            if field.name in result.columns:
                series = result[field.name]
                columns[field.name] = self.code.call(pa.Array.from_pandas, series)
        return columns
