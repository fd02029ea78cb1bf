"""Types shared by the SDK and the servers: value types (with their Arrow forms) and pushes.

The generated protobuf messages of `quiver.types.v1` live in the subpackage;
this module holds the Python side of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pyarrow as pa

__all__ = [
    "Bool",
    "Bytes",
    "ErasureResult",
    "Float32",
    "Float64",
    "Int32",
    "Int64",
    "PushResult",
    "PushTarget",
    "String",
    "Timestamp",
    "ValueType",
]


class ValueType(enum.IntEnum):
    """The type of a join key or feature; numbers match `quiver.types.v1.ValueType`."""

    INT64 = 1
    INT32 = 2
    FLOAT64 = 3
    FLOAT32 = 4
    BOOL = 5
    STRING = 6
    BYTES = 7
    TIMESTAMP = 8

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self]

    @classmethod
    def parse(cls, value: ValueType | str | int) -> ValueType:
        """Accept a ValueType, its name in any case ("int64") or its number."""
        if isinstance(value, ValueType):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        allowed = ", ".join(t.name.lower() for t in cls)
        raise ValueError(f"unknown value type {value!r}; allowed: {allowed}")

    @classmethod
    def from_arrow(cls, arrow_type: pa.DataType) -> ValueType | None:
        """The ValueType stored as `arrow_type`, or None when there is none."""
        if pa.types.is_timestamp(arrow_type):
            return cls.TIMESTAMP
        if pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
            return cls.STRING
        if pa.types.is_large_binary(arrow_type) or pa.types.is_binary_view(arrow_type):
            return cls.BYTES
        for value_type, candidate in _ARROW_TYPES.items():
            if candidate == arrow_type:
                return value_type
        return None


_ARROW_TYPES: dict[ValueType, pa.DataType] = {
    ValueType.INT64: pa.int64(),
    ValueType.INT32: pa.int32(),
    ValueType.FLOAT64: pa.float64(),
    ValueType.FLOAT32: pa.float32(),
    ValueType.BOOL: pa.bool_(),
    ValueType.STRING: pa.string(),
    ValueType.BYTES: pa.binary(),
    ValueType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
}

# Short aliases used in feature definitions: Field("age", Int64).
Int64 = ValueType.INT64
Int32 = ValueType.INT32
Float64 = ValueType.FLOAT64
Float32 = ValueType.FLOAT32
Bool = ValueType.BOOL
String = ValueType.STRING
Bytes = ValueType.BYTES
Timestamp = ValueType.TIMESTAMP


class PushTarget(enum.StrEnum):
    """Where pushed rows go: the online store, the offline history, or both."""

    ONLINE = "online"
    OFFLINE = "offline"
    ONLINE_AND_OFFLINE = "online_and_offline"

    @property
    def online(self) -> bool:
        return self is not PushTarget.OFFLINE

    @property
    def offline(self) -> bool:
        return self is not PushTarget.ONLINE


@dataclass(frozen=True)
class ErasureResult:
    """What an online and offline erasure (``delete_entities(..., offline=True)``) did.

    Attributes:
        erasure_id: Its id in the server's erasure log.
        feature_views: Views it erased from.
        online_rows_deleted: Online rows removed.
        offline_rows_deleted: History rows removed.
        files_rewritten: History files rewritten.
        datasets_affected: Training datasets ("name:version") whose spine held
            the entities; they can no longer be pulled cell for cell.
    """

    erasure_id: str
    feature_views: list[str]
    online_rows_deleted: int
    offline_rows_deleted: int
    files_rewritten: int
    datasets_affected: list[str]


@dataclass(frozen=True)
class PushResult:
    """Rows accepted, and how many of them were older than what is stored online."""

    rows: int
    superseded: int
