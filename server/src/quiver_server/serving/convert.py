"""Protobuf conversion for the serving side: typed columns in and out.

Columns travel as `quiver.types.v1.Values`, one packed array per column. This is
the only module of the server that knows how a ValueType maps to a oneof field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from quiver._types import ValueType
from quiver.errors import FieldViolation, InvalidArgumentError
from quiver.serving.v1 import serving_service_pb2 as serving_pb
from quiver.types.v1 import value_pb2
from quiver_server.push import PushTarget

PUSH_TARGETS = {
    serving_pb.PUSH_TARGET_UNSPECIFIED: PushTarget.ONLINE,
    serving_pb.PUSH_TARGET_ONLINE: PushTarget.ONLINE,
    serving_pb.PUSH_TARGET_OFFLINE: PushTarget.OFFLINE,
    serving_pb.PUSH_TARGET_ONLINE_AND_OFFLINE: PushTarget.ONLINE_AND_OFFLINE,
}

# oneof field name for each type; INT32 keys also accept int64 values.
FIELD_FOR_TYPE: dict[ValueType, str] = {
    ValueType.INT64: "int64_values",
    ValueType.INT32: "int32_values",
    ValueType.FLOAT64: "double_values",
    ValueType.FLOAT32: "float_values",
    ValueType.BOOL: "bool_values",
    ValueType.STRING: "string_values",
    ValueType.BYTES: "bytes_values",
    ValueType.TIMESTAMP: "timestamp_values",
}
_ACCEPTED_KEY_FIELDS: dict[ValueType, tuple[str, ...]] = {
    ValueType.INT64: ("int64_values", "int32_values"),
    ValueType.INT32: ("int32_values", "int64_values"),
    ValueType.STRING: ("string_values",),
    ValueType.BYTES: ("bytes_values",),
}


def column_values(values: value_pb2.Values) -> tuple[str | None, Sequence[Any]]:
    """The oneof field that is set and its values (None, [] when empty)."""
    kind = values.WhichOneof("kind")
    if kind is None:
        return None, []
    return kind, getattr(values, kind).values


def decode_key_columns(
    entities: Mapping[str, value_pb2.Values],
    key_types: Mapping[str, ValueType],
    *,
    field: str = "entities",
    max_entities: int,
) -> tuple[dict[str, Sequence[Any]], int]:
    """Check and unpack join key columns against the join keys needed.

    Returns the columns by key name and the number of entities. Every problem is
    reported at once as a field violation naming the key.
    """
    violations: list[FieldViolation] = []
    for name in key_types:
        if name not in entities:
            violations.append(FieldViolation(f"{field}.{name}", "missing join key column"))
    for name in entities:
        if name not in key_types:
            allowed = ", ".join(sorted(key_types))
            violations.append(
                FieldViolation(
                    f"{field}.{name}",
                    f"not a join key of the requested feature views; expected: {allowed}",
                )
            )
    columns: dict[str, Sequence[Any]] = {}
    for name, dtype in key_types.items():
        if name not in entities:
            continue
        kind, values = column_values(entities[name])
        accepted = _ACCEPTED_KEY_FIELDS.get(dtype, ())
        if kind not in accepted:
            violations.append(
                FieldViolation(
                    f"{field}.{name}",
                    f"join key is {dtype.name.lower()}; send {' or '.join(accepted)}, got "
                    f"{kind or 'no values'}",
                )
            )
            continue
        columns[name] = values
    lengths = {name: len(values) for name, values in columns.items()}
    if not violations and len(set(lengths.values())) > 1:
        described = ", ".join(f"{n}={c}" for n, c in sorted(lengths.items()))
        violations.append(
            FieldViolation(field, f"join key columns must have the same length, got {described}")
        )
    count = next(iter(lengths.values()), 0)
    if not violations and count == 0:
        violations.append(FieldViolation(field, "request at least one entity"))
    if not violations and count > max_entities:
        violations.append(
            FieldViolation(field, f"{count} entities requested; at most {max_entities} allowed")
        )
    if violations:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgumentError(message, violations=violations, reason="INVALID_ENTITIES")
    return columns, count


def fill_column(values: value_pb2.Values, dtype: ValueType, data: Sequence[Any]) -> None:
    """Write `data` (already zero-filled where absent) into the typed array."""
    getattr(values, FIELD_FOR_TYPE[dtype]).values.extend(data)


_TYPE_OF_FIELD = {name: value_type for value_type, name in FIELD_FOR_TYPE.items()}


def decode_push_rows(request: serving_pb.PushFeaturesRequest) -> pa.Table:
    """Pushed rows as an Arrow table, from the IPC stream or the typed columns."""
    if request.arrow_ipc and request.columns:
        raise InvalidArgumentError.for_field("arrow_ipc", "send either arrow_ipc or columns, not both")
    if request.arrow_ipc:
        try:
            with pa.ipc.open_stream(request.arrow_ipc) as reader:
                return reader.read_all()
        except pa.ArrowInvalid as exc:
            raise InvalidArgumentError.for_field("arrow_ipc", f"not an Arrow IPC stream: {exc}") from None
    if not request.columns:
        raise InvalidArgumentError.for_field("columns", "push at least one column")
    arrays = {}
    for name, values in request.columns.items():
        kind, data = column_values(values)
        if kind is None:
            raise InvalidArgumentError.for_field(f"columns.{name}", "column has no values")
        dtype = _TYPE_OF_FIELD[kind]
        arrays[name] = pa.array(data, type=pa.int64() if dtype == ValueType.TIMESTAMP else dtype.arrow_type)
        if dtype == ValueType.TIMESTAMP:
            arrays[name] = arrays[name].cast(dtype.arrow_type)
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        described = ", ".join(f"{n}={len(a)}" for n, a in sorted(arrays.items()))
        raise InvalidArgumentError.for_field("columns", f"columns must have the same length, got {described}")
    return pa.table(arrays)
