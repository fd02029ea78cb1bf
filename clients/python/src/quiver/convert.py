"""Wire conversion shared by the SDK and the servers.

- typed columns: Python, NumPy and Arrow columns to `quiver.types.v1.Values`
  (one packed array per column) and back, with the one table of which `Values`
  field carries each `ValueType`;
- push targets: `PushTarget` to `quiver.serving.v1.PushTarget` and back;
- Flight commands and tickets: `quiver.flight.v1` messages packed in a
  `google.protobuf.Any`, and the spine's default timestamp column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from google.protobuf import any_pb2, message

from quiver.serving.v1 import serving_service_pb2 as serving_pb
from quiver.types import PushTarget, ValueType
from quiver.types.v1 import value_pb2

__all__ = [
    "DEFAULT_TIMESTAMP_COLUMN",
    "FIELD_FOR_TYPE",
    "TYPE_OF_FIELD",
    "encode_columns",
    "from_values",
    "infer_type",
    "pack",
    "push_target_from_proto",
    "push_target_to_proto",
    "to_values",
]

# The spine column a training-set command uses when it names none.
DEFAULT_TIMESTAMP_COLUMN = "event_timestamp"

# The `Values` oneof field that carries each type; the one table both sides use.
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
TYPE_OF_FIELD = {name: value_type for value_type, name in FIELD_FOR_TYPE.items()}


def infer_type(name: str, values: Sequence[Any]) -> ValueType:
    """The ValueType of a column of Python values (ints, strs or bytes for keys)."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        found = ValueType.from_arrow(values.type)
        if found is None:
            raise TypeError(f"column {name!r}: unsupported Arrow type {values.type}")
        return found
    for value in values:
        if isinstance(value, bool):
            return ValueType.BOOL
        if isinstance(value, int):
            return ValueType.INT64
        if isinstance(value, float):
            return ValueType.FLOAT64
        if isinstance(value, str):
            return ValueType.STRING
        if isinstance(value, bytes):
            return ValueType.BYTES
        if hasattr(value, "item"):  # numpy scalars
            return infer_type(name, [value.item()])
        raise TypeError(f"column {name!r}: unsupported value {value!r} of {type(value).__name__}")
    raise ValueError(f"column {name!r} is empty")


def to_values(name: str, values: Any) -> value_pb2.Values:
    """Pack one column; Arrow arrays and NumPy arrays are accepted too."""
    value_type = infer_type(name, values)
    if isinstance(values, pa.Array | pa.ChunkedArray):
        if values.null_count:
            raise ValueError(f"column {name!r} holds nulls; entity keys cannot be null")
        if value_type == ValueType.TIMESTAMP:
            values = values.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        values = values.to_pylist()
    elif hasattr(values, "tolist"):
        values = values.tolist()
    out = value_pb2.Values()
    getattr(out, FIELD_FOR_TYPE[value_type]).values.extend(values)
    return out


def encode_columns(columns: Mapping[str, Sequence[Any]]) -> dict[str, value_pb2.Values]:
    return {name: to_values(name, values) for name, values in columns.items()}


def from_values(values: value_pb2.Values) -> tuple[ValueType | None, Sequence[Any]]:
    """The column's type and values; (None, []) when no array is set."""
    kind = values.WhichOneof("kind")
    if kind is None:
        return None, []
    return TYPE_OF_FIELD[kind], getattr(values, kind).values


_PUSH_TARGETS: dict[PushTarget, serving_pb.PushTarget.ValueType] = {
    PushTarget.ONLINE: serving_pb.PUSH_TARGET_ONLINE,
    PushTarget.OFFLINE: serving_pb.PUSH_TARGET_OFFLINE,
    PushTarget.ONLINE_AND_OFFLINE: serving_pb.PUSH_TARGET_ONLINE_AND_OFFLINE,
}
_FROM_PROTO = {number: target for target, number in _PUSH_TARGETS.items()}


def push_target_to_proto(target: PushTarget) -> serving_pb.PushTarget.ValueType:
    return _PUSH_TARGETS[target]


def push_target_from_proto(number: int) -> PushTarget:
    """The target a request names; unspecified (0) means online."""
    if number == serving_pb.PUSH_TARGET_UNSPECIFIED:
        return PushTarget.ONLINE
    try:
        return _FROM_PROTO[number]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unknown push target {number}") from None


def pack(msg: message.Message) -> bytes:
    """`msg` as the bytes of a Flight descriptor command or ticket (a packed Any)."""
    wrapper = any_pb2.Any()
    wrapper.Pack(msg)
    return wrapper.SerializeToString()
