"""Training sets with on-demand features and transforms.

The point-in-time join reads every stored feature a selection needs (the
on-demand views' inputs too), under internal "view__feature" names; each
joined batch then goes through the same `Pipeline` the serving server runs per
lookup, with request data taken from the spine columns named after the
request fields. Plain selections (stored features only, untransformed) skip
all of this and stream the join's batches as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pyarrow as pa

from quiver import ValueType
from quiver.errors import InvalidArgumentError
from quiver_flight.pit import check_spine_schema, group_by_view, output_schema
from quiver_server.offline.columns import cast_column, compatible
from quiver_server.registry.snapshot import FeatureRef
from quiver_server.transforms.builtins import Numbers
from quiver_server.transforms.pipeline import TRANSFORM_VERSION_METADATA, Pipeline
from quiver_server.transforms.selection import Selection


@dataclass(frozen=True)
class TrainingShape:
    """What a training-set command computes.

    Attributes:
        selection: The resolved selection.
        pipeline: Turns joined batches into output batches; None for a plain
            selection.
        full_feature_names: Name columns "view__feature".
    """

    selection: Selection
    pipeline: Pipeline | None
    full_feature_names: bool

    @property
    def join_refs(self) -> list[FeatureRef]:
        """The stored features the point-in-time join reads."""
        return list(self.selection.stored)

    @property
    def join_full_names(self) -> bool:
        # Internal columns get unambiguous names; the pipeline names the output.
        return self.full_feature_names if self.pipeline is None else True

    @property
    def version(self) -> int:
        return self.pipeline.version if self.pipeline is not None else 0

    def schema(self, spine_schema: pa.Schema, timestamp_column: str) -> pa.Schema:
        """The output schema for a spine; checks the spine fits.

        Raises:
            InvalidArgumentError: a missing or mistyped join key, timestamp or
                request field column, or clashing output names.
        """
        if self.pipeline is None:
            return output_schema(spine_schema, self.join_refs, timestamp_column=timestamp_column,
                                 full_feature_names=self.full_feature_names)
        views = [view for view, _ in group_by_view(self.join_refs)]
        check_spine_schema(spine_schema, views, timestamp_column)
        self._check_request_columns(spine_schema)
        fields = []
        for i, output in enumerate(self.pipeline.outputs):
            if output.name in spine_schema.names:
                raise InvalidArgumentError.for_field(
                    f"features[{i}]",
                    f"feature {output.ref!r} would be column {output.name!r}, which the spine "
                    f"already has; rename the spine column or set full_feature_names",
                    reason="OUTPUT_COLUMN_COLLISION",
                )
            fields.append(output.arrow_field())
        metadata = {TRANSFORM_VERSION_METADATA: str(self.version).encode()}
        return pa.schema([*spine_schema, *fields], metadata=metadata)

    def _check_request_columns(self, schema: pa.Schema) -> None:
        for name, dtype in self.selection.request_fields.items():
            index = schema.get_field_index(name)
            if index < 0:
                raise InvalidArgumentError.for_field(
                    f"spine.{name}",
                    f"the spine has no column {name!r}, a request field of the requested on-demand "
                    f"views ({dtype.name.lower()}); spine columns: {', '.join(schema.names)}",
                    reason="SPINE_MISSING_REQUEST_FIELD", metadata={"column": name},
                )
            if not compatible(dtype, schema.field(index).type):
                raise InvalidArgumentError.for_field(
                    f"spine.{name}",
                    f"spine column {name!r} is {schema.field(index).type}, but request field "
                    f"{name!r} is {dtype.name.lower()}",
                    reason="SPINE_REQUEST_FIELD_TYPE", metadata={"column": name},
                )

    def request_arrays(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """The request fields of a joined batch, cast as online request data is."""
        return {
            name: cast_column(batch.column(name), dtype)
            for name, dtype in self.selection.request_fields.items()
        }

    def batches(
        self, joined: Iterator[pa.RecordBatch], schema: pa.Schema, spine_width: int
    ) -> Iterator[pa.RecordBatch]:
        """Output batches from the join's batches (spine columns, then stored features)."""
        pipeline = self.pipeline
        if pipeline is None:
            yield from joined
            return
        for batch in joined:
            stored = batch.columns[spine_width:]
            arrays = pipeline.compute(stored.__getitem__, self.request_arrays(batch), batch.num_rows)
            outputs = [
                stored[output.stored] if array is None
                else array.to_arrow() if isinstance(array, Numbers) else array
                for output, array in zip(pipeline.outputs, arrays, strict=True)
            ]
            yield pa.RecordBatch.from_arrays([*batch.columns[:spine_width], *outputs], schema=schema)

    def required_fields(self) -> list[pa.Field]:
        """The request-field columns a spine must carry."""
        return [pa.field(name, dtype.arrow_type, metadata={b"quiver.role": b"request"})
                for name, dtype in self.selection.request_fields.items()]


def base_columns(
    shape: TrainingShape, joined: Iterator[pa.RecordBatch], spine_width: int
) -> dict[str, pa.ChunkedArray]:
    """The training set's column each transform reads, whole (for fitting)."""
    pipeline = shape.pipeline
    assert pipeline is not None
    chunks: dict[str, list[pa.Array]] = {t.feature: [] for t in shape.selection.transforms}
    for batch in joined:
        stored = batch.columns[spine_width:]
        found = pipeline.bases(stored.__getitem__, shape.request_arrays(batch), batch.num_rows)
        for ref, array in found.items():
            chunks[ref].append(array)
    types = _ref_types(shape.selection)
    return {ref: pa.chunked_array(arrays, type=types[ref]) for ref, arrays in chunks.items()}


def _ref_types(selection: Selection) -> Mapping[str, pa.DataType]:
    types: dict[str, ValueType] = {ref.ref: ref.feature.dtype for ref in selection.requested}
    return {ref: dtype.arrow_type for ref, dtype in types.items()}
