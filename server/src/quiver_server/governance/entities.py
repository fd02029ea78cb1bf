"""Entity keys of an erasure: storage without the values, matching in Arrow.

An erasure request must carry the keys it erases until it is done (the
pending record); afterwards only keyed hashes remain (HMAC-SHA256 under a
random key kept in ``governance/erasures/key``), so the log never holds the
erased identifiers, yet an operator holding the key file can still answer "was
this entity erased?" by hashing the key again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from functools import reduce
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from quiver import FeatureView
from quiver_server.governance.files import write_durable

KeyTuple = tuple[Any, ...]
_KEY_BYTES = 32


def encode_value(value: Any) -> dict[str, Any]:
    """A join key value as JSON (bytes are base64)."""
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode()}
    if isinstance(value, int):
        return {"i": value}
    return {"s": str(value)}


def decode_value(data: Mapping[str, Any]) -> Any:
    if "b" in data:
        return base64.b64decode(data["b"])
    if "i" in data:
        return int(data["i"])
    return str(data["s"])


def view_keys(view: FeatureView, entities: Mapping[str, Sequence[Any]]) -> list[KeyTuple]:
    """The entities projected on `view`'s join keys, in key order, without repeats."""
    columns = [entities[name] for name in view.join_key_names]
    return list(dict.fromkeys(zip(*columns, strict=True)))


def hash_key(secret: bytes, names: Sequence[str], values: KeyTuple) -> str:
    """The keyed hash recorded for one entity key in place of its values."""
    canonical = json.dumps(
        [[n, encode_value(v)] for n, v in zip(names, values, strict=True)], sort_keys=True
    )
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


def load_secret(path: Path) -> bytes:
    """The hashing key, created on first use."""
    try:
        secret = path.read_bytes()
        if len(secret) == _KEY_BYTES:
            return secret
    except FileNotFoundError:
        pass
    write_durable(path, secrets.token_bytes(_KEY_BYTES), exclusive=True, mode=0o600)
    return path.read_bytes()


def table_mask(table: pa.Table, columns: Sequence[str], keys: Sequence[KeyTuple]) -> pa.ChunkedArray:
    """True for each row of `table` whose key columns equal one of `keys`."""
    mask: Any = None
    for key in keys:
        try:
            scalars = [pa.scalar(v, type=table.schema.field(c).type)
                       for c, v in zip(columns, key, strict=True)]
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            continue  # a value the column's type cannot hold (an int32 column) matches no row
        parts = [pc.equal(table[c], scalar) for c, scalar in zip(columns, scalars, strict=True)]
        match = reduce(pc.and_, parts)
        mask = match if mask is None else pc.or_(mask, match)
    if mask is None:
        return pa.chunked_array([pa.array([False] * table.num_rows, pa.bool_())])
    return pc.fill_null(mask, False)


def filter_expression(columns: Sequence[str], keys: Sequence[KeyTuple]) -> ds.Expression | None:
    """A dataset filter that is true for the rows of `keys` (None when there are none)."""
    expression: ds.Expression | None = None
    for key in keys:
        parts = [ds.field(c) == v for c, v in zip(columns, key, strict=True)]
        match = reduce(lambda a, b: a & b, parts)
        expression = match if expression is None else expression | match
    return expression
