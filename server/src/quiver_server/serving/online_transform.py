"""Online lookups through the transformation pipeline.

The stored values a lookup read (graded columns) become Arrow arrays -- null
wherever the status is not PRESENT, exactly as a training set holds a value
that is missing or outside the ttl -- and go through the same `Pipeline` the
Flight server runs. Only values an on-demand view or a transform reads are
converted; the rest pass through untouched.

Statuses of computed columns: a transformed value keeps the status and event
time of the value it came from (NULL_VALUE where the transform turns a present
value into null, e.g. bucketize of NaN); an on-demand value is PRESENT, or
NULL_VALUE when the function returned null, with event time 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from quiver import ValueType
from quiver.convert import FIELD_FOR_TYPE, from_values
from quiver.errors import FieldViolation, InvalidArgumentError
from quiver.types.v1 import value_pb2
from quiver_server.echo import clip
from quiver_server.offline.columns import cast_column
from quiver_server.serving.online_read import (
    NULL_VALUE,
    PRESENT,
    ZERO_VALUES,
    OutputColumn,
    ReadPlan,
)
from quiver_server.transforms.builtins import Matrix, Numbers

# What a request field accepts: the rule spine columns follow (offline.columns).
_ACCEPTED: dict[ValueType, tuple[ValueType, ...]] = {
    ValueType.INT64: (ValueType.INT64, ValueType.INT32),
    ValueType.INT32: (ValueType.INT32, ValueType.INT64),
    ValueType.FLOAT64: (ValueType.FLOAT64, ValueType.FLOAT32, ValueType.INT64, ValueType.INT32),
    ValueType.FLOAT32: (ValueType.FLOAT32, ValueType.FLOAT64, ValueType.INT64, ValueType.INT32),
}


def apply_pipeline(
    plan: ReadPlan,
    columns: list[OutputColumn],
    request_data: Mapping[str, value_pb2.Values],
    count: int,
) -> list[OutputColumn]:
    """The output columns of `plan` from the stored columns it read.

    Raises:
        InvalidArgumentError: bad request data, or a failing on-demand function
            or custom transform (named).
    """
    pipeline = plan.pipeline
    if pipeline is None:
        if request_data:
            raise InvalidArgumentError.for_field(
                "request_data", "no requested on-demand feature view reads request data"
            )
        return columns
    request = decode_request_data(request_data, pipeline.selection.request_fields, count)
    arrays = _stored_arrays(columns, pipeline.arrow_input_groups, count)

    def numbers(indices: Sequence[int]) -> Matrix:
        return scaler_matrix([columns[i] for i in indices], count)

    out: list[OutputColumn] = []
    computed = pipeline.compute(arrays.__getitem__, request, count, numbers)
    for output, array in zip(pipeline.outputs, computed, strict=True):
        if array is None:
            out.append(columns[output.stored])
        else:
            source = columns[output.stored] if output.stored >= 0 else None
            out.append(_graded(output.dtype, array, source, count))
    return out


def scaler_matrix(columns: Sequence[OutputColumn], count: int) -> Matrix:
    """Numeric columns read (zero where not PRESENT, masked) as the scalers' input rows.

    One NumPy conversion for all of them: a Python int (int64 or int32) or
    float converts to the nearest float64, the value a training batch's
    int64 -> float64 cast gives; float32 values are rounded to float32 first,
    as a training set holds them.
    """
    values = np.array([column.values for column in columns], np.float64)
    for row, column in enumerate(columns):
        if column.dtype == ValueType.FLOAT32:
            values[row] = np.array(column.values, np.float32)
    nulls = [
        None if column.statuses.count(PRESENT) == count
        else np.array([s != PRESENT for s in column.statuses])
        for column in columns
    ]
    return Matrix(values.reshape(len(columns), count), nulls)


def _stored_arrays(
    columns: list[OutputColumn], groups: Sequence[tuple[ValueType, Sequence[int]]], count: int
) -> dict[int, pa.Array]:
    """The stored values the pipeline reads, as a training set holds them (null
    unless PRESENT): one Arrow conversion per type, sliced per feature."""
    arrays: dict[int, pa.Array] = {}
    for dtype, indices in groups:
        values: list[Any] = []
        for index in indices:
            column = columns[index]
            if column.statuses.count(PRESENT) == count:
                values.extend(column.values)
            else:
                values.extend(v if s == PRESENT else None
                              for v, s in zip(column.values, column.statuses, strict=True))
        if dtype == ValueType.TIMESTAMP:  # microseconds online
            joined = pa.array(values, pa.int64()).cast(dtype.arrow_type)
        else:
            joined = pa.array(values, dtype.arrow_type)
        if len(indices) == 1:
            arrays[indices[0]] = joined
            continue
        for position, index in enumerate(indices):
            arrays[index] = joined.slice(position * count, count)
    return arrays


def _graded(
    dtype: ValueType, column: pa.Array | Numbers, source: OutputColumn | None, count: int
) -> OutputColumn:
    event_ts = source.event_ts if source is not None else [0] * count
    if isinstance(column, Numbers):
        values: list[Any] = column.values.tolist()
        nulls = None if column.nulls is None else column.nulls.tolist()
    else:
        if dtype == ValueType.TIMESTAMP:
            column = column.cast(pa.int64())
        values = column.to_pylist()
        nulls = None if column.null_count == 0 else [v is None for v in values]
    if nulls is None:
        return OutputColumn(dtype, values, [PRESENT] * count, event_ts)
    zero = ZERO_VALUES[dtype]
    statuses = []
    for i, null in enumerate(nulls):
        if null:
            values[i] = zero
            inherited = source.statuses[i] if source is not None else PRESENT
            statuses.append(NULL_VALUE if inherited == PRESENT else inherited)
        else:
            statuses.append(PRESENT)
    return OutputColumn(dtype, values, statuses, event_ts)


def request_rows(
    entities: Mapping[str, value_pb2.Values],
    request_data: Mapping[str, value_pb2.Values],
    max_entities: int,
) -> int:
    """Rows of a lookup that reads no stored feature: as many as the request data has.

    Raises:
        InvalidArgumentError: entity columns were sent (there are no join keys
            to read), or no rows, or more than the server allows.
    """
    if entities:
        name = clip(next(iter(entities)))
        raise InvalidArgumentError.for_field(
            f"entities.{name}", "the requested features read no stored feature; send no entities, "
            "only request_data", reason="INVALID_ENTITIES",
        )
    count = max((len(from_values(v)[1]) for v in request_data.values()), default=0)
    if count == 0:
        raise InvalidArgumentError.for_field("request_data", "send at least one row")
    if count > max_entities:
        raise InvalidArgumentError.for_field(
            "request_data", f"{count} rows requested; at most {max_entities} allowed"
        )
    return count


def decode_request_data(
    data: Mapping[str, value_pb2.Values], fields: Mapping[str, ValueType], count: int
) -> dict[str, pa.Array]:
    """Check request data against the fields the on-demand views read; one array each.

    Every problem is reported at once, as field violations naming the field.
    """
    violations: list[FieldViolation] = []
    arrays: dict[str, pa.Array] = {}
    for name in data:
        if name not in fields:
            expected = ", ".join(sorted(fields)) or "none"
            violations.append(FieldViolation(
                f"request_data.{clip(name)}",
                f"not a request field of the requested on-demand views; expected: {expected}",
            ))
    for name, dtype in fields.items():
        where = f"request_data.{name}"
        if name not in data:
            violations.append(FieldViolation(where, f"missing request field ({dtype.name.lower()})"))
            continue
        sent, values = from_values(data[name])
        accepted = _ACCEPTED.get(dtype, (dtype,))
        if sent not in accepted:
            violations.append(FieldViolation(
                where, f"field is {dtype.name.lower()}; send "
                f"{' or '.join(FIELD_FOR_TYPE[t] for t in accepted)}, got "
                f"{FIELD_FOR_TYPE[sent] if sent else 'no values'}",
            ))
            continue
        if len(values) != count:
            violations.append(FieldViolation(
                where, f"has {len(values)} values; send one per entity ({count})"
            ))
            continue
        if dtype == ValueType.TIMESTAMP:
            arrays[name] = pa.array(values, pa.int64()).cast(dtype.arrow_type)
        else:
            arrays[name] = _checked(where, values, sent, dtype, violations)
    if violations:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgumentError(message, violations=violations, reason="INVALID_REQUEST_DATA")
    return arrays


def _checked(
    where: str, values: Sequence[Any], sent: ValueType | None, dtype: ValueType,
    violations: list[FieldViolation],
) -> pa.Array:
    assert sent is not None
    try:
        # The cast a spine column of this type gets, so both paths see one value.
        return cast_column(pa.array(values, sent.arrow_type), dtype)
    except (pa.ArrowInvalid, OverflowError) as exc:
        violations.append(FieldViolation(where, f"values do not fit {dtype.name.lower()}: {exc}"))
        return pa.array([], dtype.arrow_type)
