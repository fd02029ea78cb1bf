"""The one transformation path both servers run: on-demand views, then transforms.

Given the stored features a selection reads (Arrow arrays, null where a value
is missing or too old) and the request data (Arrow arrays), `Pipeline.compute`
runs the on-demand functions and applies the service's bound transforms, and
returns the output columns in order. The serving server calls it once per
lookup, the Flight server once per record batch; nothing else computes a
transformed or on-demand value, so both paths agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from quiver import ValueType
from quiver.errors import InvalidArgumentError
from quiver_server.registry.snapshot import FeatureRef
from quiver_server.transforms.builtins import BoundTransform, Matrix, Numbers, affine
from quiver_server.transforms.on_demand import OnDemandRunner
from quiver_server.transforms.selection import Selection

FEATURE_REF_METADATA = b"quiver.feature_ref"
TRANSFORM_METADATA = b"quiver.transform"
TRANSFORM_VERSION_METADATA = b"quiver.transform_version"

StoredArrays = Callable[[int], pa.Array]


@dataclass(frozen=True)
class Output:
    """One output column.

    Attributes:
        name: Column name.
        dtype: Its type.
        ref: The feature it is computed from, "view:feature".
        stored: Index in `Selection.stored` of the stored value it comes from
            (its status and event time carry over online), -1 for on-demand.
        transform: The transform's kind, "" when untransformed.
    """

    name: str
    dtype: ValueType
    ref: str
    stored: int
    transform: str

    @property
    def passthrough(self) -> bool:
        """A stored value, untouched: no array needs to be built for it."""
        return self.stored >= 0 and not self.transform

    def arrow_field(self) -> pa.Field:
        metadata = {FEATURE_REF_METADATA: self.ref.encode()}
        if self.transform:
            metadata[TRANSFORM_METADATA] = self.transform.encode()
        return pa.field(self.name, self.dtype.arrow_type, metadata=metadata)


@dataclass(frozen=True)
class _Step:
    """How one requested feature becomes output columns."""

    stored: int  # -1 for on-demand
    on_demand: tuple[str, int] | None  # (view, feature position)
    bound: BoundTransform | None
    first: int  # index of its first output column


class Pipeline:
    """A selection's on-demand runners and bound transforms.

    Args:
        selection: What is requested.
        runners: One runner per on-demand view of the selection, by name.
        bound: The service's transforms with their parameters, by feature
            ref; None to compute only the values transforms read (`bases`),
            for fitting.
        version: Parameter set version the transforms were bound with (0: none).
        full_names: Name columns "view__feature".
    """

    def __init__(
        self,
        selection: Selection,
        runners: Mapping[str, OnDemandRunner],
        bound: Mapping[str, BoundTransform] | None,
        version: int,
        full_names: bool,
    ) -> None:
        self.selection = selection
        self.runners = dict(runners)
        self.version = version
        self._stored_index = {ref.ref: i for i, ref in enumerate(selection.stored)}
        kinds = {t.feature: t.kind for t in selection.transforms}
        self.outputs: list[Output] = []
        self._steps: list[_Step] = []
        # Parameters of the scalers, applied together (see builtins.affine).
        self._affine: list[tuple[float, float]] = []  # in step order
        for ref in selection.requested:
            stored = self._stored_index[ref.ref] if isinstance(ref, FeatureRef) else -1
            on_demand = None
            if stored < 0:
                on_demand = (ref.view.name, ref.view.feature_names.index(ref.feature.name))
            transform = (bound or {}).get(ref.ref)
            base = ref.output_name(full_names)
            first = len(self.outputs)
            if transform is None:
                self.outputs.append(Output(base, ref.feature.dtype, ref.ref, stored, ""))
            else:
                self.outputs.extend(
                    Output(base + suffix, dtype, ref.ref, stored, kinds[ref.ref])
                    for suffix, dtype in transform.outputs
                )
            self._steps.append(_Step(stored, on_demand, transform, first))
            if transform is not None and transform.affine is not None:
                self._affine.append(transform.affine)
        self._check_names()
        # The steps `compute` has work for (a passthrough stored value has none).
        self._active = [s for s in self._steps if s.on_demand is not None or s.bound is not None]
        self._affine_table = np.asarray(self._affine, np.float64).reshape(-1, 2)
        self._affine_positions = [
            s.first for s in self._steps if s.bound is not None and s.bound.affine is not None
        ]
        # Per on-demand view: its input names, each with where the value comes
        # from (a request field, or an index in `Selection.stored`).
        self._on_demand_inputs: list[tuple[str, list[tuple[str, str | int]]]] = [
            (view.name, [
                *((f.name, f.name) for f in view.request_fields),
                *((name, self._stored_index[f"{p.view}:{name}"])
                  for p in view.feature_inputs for name in p.features),
            ])
            for view in selection.on_demand
        ]
        inputs = [
            source for _, sources in self._on_demand_inputs for _, source in sources
            if isinstance(source, int)
        ]
        inputs.extend(
            s.stored for s in self._steps
            if s.bound is not None and s.bound.affine is None and s.stored >= 0
        )
        self.arrow_inputs: tuple[int, ...] = tuple(dict.fromkeys(inputs))
        """Indices in `Selection.stored` of the values `compute` reads as arrays."""
        self.numeric_inputs: tuple[int, ...] = tuple(
            s.stored for s in self._steps
            if s.bound is not None and s.bound.affine is not None and s.stored >= 0
        )
        """Indices of the values the scalers read (`compute`'s `numbers`), in step order."""
        groups: dict[ValueType, list[int]] = {}
        for index in self.arrow_inputs:
            groups.setdefault(selection.stored[index].feature.dtype, []).append(index)
        self.arrow_input_groups: tuple[tuple[ValueType, tuple[int, ...]], ...] = tuple(
            (dtype, tuple(indices)) for dtype, indices in groups.items()
        )
        """`arrow_inputs` grouped by type, for callers that convert a type at once."""

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def _check_names(self) -> None:
        seen: dict[str, str] = {}
        for output in self.outputs:
            if output.name in seen:
                raise InvalidArgumentError.for_field(
                    "full_feature_names",
                    f"output column {output.name!r} comes from both {seen[output.name]!r} and "
                    f"{output.ref!r}; set full_feature_names to tell them apart",
                    reason="OUTPUT_COLUMN_COLLISION",
                )
            seen[output.name] = output.ref

    def _run_on_demand(
        self, stored: StoredArrays, request: Mapping[str, pa.Array], rows: int
    ) -> dict[str, list[pa.Array]]:
        results: dict[str, list[pa.Array]] = {}
        for view, sources in self._on_demand_inputs:
            inputs = {
                name: request[source] if isinstance(source, str) else stored(source)
                for name, source in sources
            }
            results[view] = self.runners[view].run(inputs, rows)
        return results

    def compute(
        self,
        stored: StoredArrays,
        request: Mapping[str, pa.Array],
        rows: int,
        numbers: Callable[[Sequence[int]], Matrix] | None = None,
    ) -> list[pa.Array | Numbers | None]:
        """One column per output, in order; None for a passthrough stored value.

        Scalers' outputs come as `Numbers` (`Numbers.to_arrow` converts), the
        rest as Arrow arrays.

        Args:
            stored: Index in `Selection.stored` to that feature's array; asked
                for `arrow_inputs` (and for `numeric_inputs` when `numbers` is
                None).
            request: Request field to array (every field the views declare).
            rows: Rows in this batch.
            numbers: `numeric_inputs` to their values as the rows of one
                `Matrix` (in that order), for a caller that holds them
                outside Arrow; by default read from `stored`'s arrays.

        Raises:
            InvalidArgumentError: an on-demand function or custom transform
                failed or returned the wrong type or length.
        """
        on_demand = self._run_on_demand(stored, request, rows) if self.runners else {}
        out: list[pa.Array | Numbers | None] = [None] * len(self.outputs)
        # Scalers' inputs in step order: a stored feature's index, or a computed column.
        scaled: list[int | Numbers] = []
        for step in self._active:
            bound = step.bound
            if step.on_demand is not None:
                view, position = step.on_demand
                value: pa.Array | None = on_demand[view][position]
                if bound is None:
                    out[step.first] = value
                    continue
            else:
                assert bound is not None  # an active stored value has a transform
                if bound.affine is not None:
                    scaled.append(step.stored)
                    continue
                value = stored(step.stored)
            if bound.affine is not None:
                scaled.append(Numbers.of(value))
            else:
                results = bound.apply(value)
                out[step.first:step.first + len(results)] = results
        if scaled:
            results = affine(self._scaler_inputs(scaled, stored, numbers), self._affine_table)
            for position, result in zip(self._affine_positions, results, strict=True):
                out[position] = result
        return out

    def _scaler_inputs(
        self,
        scaled: list[int | Numbers],
        stored: StoredArrays,
        numbers: Callable[[Sequence[int]], Matrix] | None,
    ) -> Matrix:
        if numbers is None:
            return Matrix.stack(
                [Numbers.of(stored(s)) if isinstance(s, int) else s for s in scaled]
            )
        matrix = numbers(self.numeric_inputs)
        if len(self.numeric_inputs) == len(scaled):  # every scaler reads a stored feature
            return matrix
        read = iter(matrix.rows())
        return Matrix.stack([next(read) if isinstance(s, int) else s for s in scaled])

    def bases(
        self, stored: StoredArrays, request: Mapping[str, pa.Array], rows: int
    ) -> dict[str, pa.Array]:
        """The values the service's transforms read, by feature ref (for fitting)."""
        wanted = {t.feature for t in self.selection.transforms}
        on_demand = self._run_on_demand(stored, request, rows) if self.runners else {}
        found: dict[str, pa.Array] = {}
        for ref, step in zip(self.selection.requested, self._steps, strict=True):
            if ref.ref in wanted:
                if step.on_demand is not None:
                    view, position = step.on_demand
                    found[ref.ref] = on_demand[view][position]
                else:
                    found[ref.ref] = stored(step.stored)
        return found
