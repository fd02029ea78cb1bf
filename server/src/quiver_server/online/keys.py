"""Canonical byte encoding of entity keys, shared by every online store.

The same entity must produce the same bytes whether its key came from Parquet
(materialize), a push or a gRPC request, so values are encoded by join-key
order and type, never by their Python repr.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from quiver import Field, ValueType
from quiver.errors import InvalidArgumentError
from quiver_server.echo import clip

_INT = struct.Struct(">q")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_LEN = struct.Struct(">I")

# The one table of what a join key of each type accepts: which wire types (an
# integer key takes either integer width) and which Python values.
ACCEPTED_KEY_TYPES: dict[ValueType, tuple[ValueType, ...]] = {
    ValueType.INT64: (ValueType.INT64, ValueType.INT32),
    ValueType.INT32: (ValueType.INT32, ValueType.INT64),
    ValueType.STRING: (ValueType.STRING,),
    ValueType.BYTES: (ValueType.BYTES,),
}
_PYTHON_TYPES: dict[ValueType, type] = {
    ValueType.INT64: int, ValueType.INT32: int, ValueType.STRING: str, ValueType.BYTES: bytes,
}


def check_key_values(field: str, key: Field, values: Sequence[Any]) -> None:
    """InvalidArgumentError naming `field` if a value does not fit join key `key`'s type."""
    python_type = _PYTHON_TYPES.get(key.dtype)
    bad = [v for v in values if python_type is None or not isinstance(v, python_type)
           or isinstance(v, bool) or not _encodable(v)]
    if bad:
        raise InvalidArgumentError.for_field(
            field, f"join key is {key.dtype.name.lower()}; got {clip(repr(bad[0]))}"
        )


def _encodable(value: Any) -> bool:
    """Whether the key encoding can hold `value`: an int in int64's range, text
    that is Unicode (the command line passes undecodable bytes as surrogates)."""
    if isinstance(value, int):
        return _INT64_MIN <= value <= _INT64_MAX
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
    return True


def parse_key(key: Field, text: str) -> Any:
    """A join key value written as text (the CLI's KEY=VALUE): int, str or UTF-8 bytes.

    Raises:
        ValueError: text that is not a value of the key's type.
    """
    if key.dtype in (ValueType.INT64, ValueType.INT32):
        value = int(text)
        if not _encodable(value):
            raise ValueError(f"{text!r} is outside int64's range")
        return value
    if key.dtype == ValueType.BYTES:
        return text.encode()
    if key.dtype == ValueType.STRING:
        return text
    raise ValueError(f"join keys of type {key.dtype.name.lower()} are not supported")


def encode_value(value: Any, dtype: ValueType) -> bytes:
    if dtype in (ValueType.INT64, ValueType.INT32):
        packed: bytes = _INT.pack(value)
        return b"i" + packed
    if dtype == ValueType.STRING:
        data: bytes = value.encode()
        return b"s" + _LEN.pack(len(data)) + data
    if dtype == ValueType.BYTES:
        return b"b" + _LEN.pack(len(value)) + bytes(value)
    raise ValueError(f"join keys of type {dtype.name.lower()} are not supported")


def encode_keys(join_keys: Sequence[Field], columns: Sequence[Sequence[Any]]) -> list[bytes]:
    """Encode entity keys given one column of values per join key (same order)."""
    if len(join_keys) == 1:
        dtype = join_keys[0].dtype
        if dtype in (ValueType.INT64, ValueType.INT32):
            # The hot path of online reads: same bytes as encode_value, fewer calls.
            return [b"i" + v.to_bytes(8, "big", signed=True) for v in columns[0]]
        return [encode_value(v, dtype) for v in columns[0]]
    dtypes = [k.dtype for k in join_keys]
    return [
        b"".join(encode_value(v, t) for v, t in zip(row, dtypes, strict=True))
        for row in zip(*columns, strict=True)
    ]
