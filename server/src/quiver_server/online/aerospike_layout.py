"""How Quiver lays feature rows out in Aerospike: sets, bins and values.

Pure functions and small value objects, kept apart from the store so they can be
tested without a server. See `quiver_server.online.aerospike` for the store.

Layout: one record per (feature view, entity key) in the configured namespace,
keyed by the entity's canonical key bytes (`quiver_server.online.keys`) in the
set `set_name(project, view)`. Bins:

- ``_e``: event timestamp, int microseconds since the epoch (UTC);
- ``_c``: created timestamp, same unit;
- one bin per feature, named by the registry's short storage name (``f0``, ``f1``,
  ...; at most 15 characters, never reused), holding the value in its native
  Aerospike type. A null feature has no bin.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aerospike

from quiver import FeatureView
from quiver.errors import FailedPreconditionError
from quiver.types import ValueType
from quiver_server.online.aerospike_expressions import CREATED_BIN, EVENT_BIN
from quiver_server.registry.layout import ViewTable, feature_type, storage_name

RESERVED_BINS = frozenset({EVENT_BIN, CREATED_BIN})
MAX_BIN_NAME = 15  # bytes; a server limit
MAX_SET_NAME = 63  # bytes; a server limit

# Aerospike rejects TTLs above ten years (its MAX_ALLOWED_TTL); a view whose ttl is
# longer keeps its records forever, which is safe because serving grades max age
# itself on every read.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600

# Set names made only of these are used as they are. Others (or longer ones) are
# hashed: the server accepts ':' and ';' in a set name, but its info protocol,
# which asadm and monitoring read, uses them as separators.
_SAFE_SET_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
# Marks a shortened set name. It is not in the safe alphabet, so no name used as
# it is can ever equal a shortened one.
_HASH_MARK = "#"
_HASH_CHARS = 20  # 80 bits of SHA-256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_name(project: str, view: str) -> str:
    """The Aerospike set holding `view` of `project`.

    ``"<project>.<view>"`` when that fits in 63 bytes and uses only letters,
    digits, ``_``, ``.`` and ``-``; otherwise a stable 63-character form: the
    first 42 characters of that name (unsafe characters replaced by ``_``),
    ``#`` and 20 hex digits of its SHA-256. View names cannot contain ``.``, so
    the full form is unambiguous, and only shortened names contain ``#``, so a
    shortened name never equals a full one.
    """
    full = f"{project}.{view}"
    if len(full) <= MAX_SET_NAME and _SAFE_SET_NAME.match(full):
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:_HASH_CHARS]
    prefix = _UNSAFE_CHARS.sub("_", full[: MAX_SET_NAME - _HASH_CHARS - len(_HASH_MARK)])
    return f"{prefix}{_HASH_MARK}{digest}"


def record_ttl(view: FeatureView) -> int:
    """The TTL written with the view's records: its ttl in seconds, or never expire.

    A ttl of 0 (unlimited) maps to the client's `TTL_NEVER_EXPIRE`, not to 0,
    which would mean the namespace's default-ttl.
    """
    seconds = view.ttl_seconds
    if seconds <= 0 or seconds > MAX_TTL_SECONDS:
        return int(aerospike.TTL_NEVER_EXPIRE)
    return seconds


def _to_bool(value: Any) -> Any:
    # Records written by clients that store booleans as integers read back as 0/1.
    return None if value is None else bool(value)


def _to_bytes(value: Any) -> Any:
    # Older clients return blobs as bytearray; the contract is bytes.
    return bytes(value) if isinstance(value, bytearray) else value


Converter = Callable[[Any], Any]

# Values are written as they come (int -> integer, float -> double, str -> string,
# bytes -> blob, bool -> boolean with send_bool_as, timestamps as int micros);
# only reads of these types need converting back.
_DECODERS: dict[ValueType, Converter] = {ValueType.BOOL: _to_bool, ValueType.BYTES: _to_bytes}


def decoder(dtype: ValueType) -> Converter | None:
    """The conversion a value of `dtype` needs after it is read, if any."""
    return _DECODERS.get(dtype)


# Python types the client stores as each feature type; others may fail or be
# stored as something else (a dict becomes a map).
_PYTHON_TYPES: dict[ValueType, tuple[type, ...]] = {
    ValueType.INT64: (int,),
    ValueType.INT32: (int,),
    ValueType.TIMESTAMP: (int,),
    ValueType.FLOAT64: (float, int),
    ValueType.FLOAT32: (float, int),
    ValueType.BOOL: (bool,),
    ValueType.STRING: (str,),
    ValueType.BYTES: (bytes, bytearray),
}


def find_bad_value(
    view: FeatureView, features: Sequence[str], columns: Sequence[Sequence[Any]]
) -> str | None:
    """The first value not of its feature's type, described, or None.

    Run when the client refuses a batch, to name the culprit; checking every
    value of every write would cost more than the rare failure it explains.
    """
    for feature, column in zip(features, columns, strict=True):
        dtype = view.feature(feature).dtype
        allowed = _PYTHON_TYPES[dtype]
        for row, value in enumerate(column):
            if value is not None and not isinstance(value, allowed):
                return (
                    f"feature {feature!r} is {dtype.name.lower()} but row {row} holds "
                    f"{type(value).__name__} {value!r:.60}"
                )
    return None




def bin_name(table: ViewTable, feature: str) -> str:
    """The bin of `feature`, checked against Aerospike's rules."""
    name = storage_name(table, feature)
    if name in RESERVED_BINS or not name or len(name.encode()) > MAX_BIN_NAME:
        raise FailedPreconditionError(
            f"feature view {table.name!r}: storage name {name!r} of feature {feature!r} "
            f"cannot be an Aerospike bin (1-{MAX_BIN_NAME} bytes, not "
            f"{' or '.join(sorted(RESERVED_BINS))})",
            reason="NO_STORAGE_LAYOUT",
        )
    return name


@dataclass(frozen=True)
class ReadLayout:
    """What to read for some features of one view, and how to decode it."""

    view: FeatureView
    set_name: str
    features: tuple[str, ...]
    bins: tuple[str, ...]  # aligned with `features`
    decoders: tuple[Converter | None, ...]  # aligned with `features`
    read_bins: list[str]  # EVENT_BIN, then `bins` without repeats
    read_ops: list[dict[str, Any]]  # the same, as batch Read operations
    # Bins of the view's current features that were not asked for.
    unwanted_bins: frozenset[str]


def read_layout(table: ViewTable, features: Sequence[str]) -> ReadLayout:
    """The bins and decoders to read `features` of `table`."""
    features = tuple(features)
    bins = tuple(bin_name(table, f) for f in features)
    decoders = tuple(decoder(feature_type(table.view, f)) for f in features)
    read_bins = list(dict.fromkeys((EVENT_BIN, *bins)))
    # The operation dicts `aerospike_helpers.operations.operations.read` builds.
    read_ops = [{"op": aerospike.OPERATOR_READ, "bin": b} for b in read_bins]
    unwanted = frozenset(table.bin_names.values()).difference(bins)
    return ReadLayout(
        table.view, set_name(table.project, table.name), features, bins,
        decoders, read_bins, read_ops, unwanted,
    )


def shared_bins(layouts: Sequence[ReadLayout]) -> list[str] | None:
    """One bin list that reads exactly the wanted bins of every view, or None.

    Bin names repeat across views (each view's start at ``f0``), so the union of
    the requested bins usually asks each record for nothing it does not want:
    a record only returns the bins it has. When it would return some unwanted
    bin of a view (a view read in part while another view wants that name),
    there is no such list.
    """
    first = layouts[0].read_bins
    if all(layout.read_bins == first for layout in layouts):
        return first
    union = list(dict.fromkeys(b for layout in layouts for b in layout.read_bins))
    if any(layout.unwanted_bins.intersection(union) for layout in layouts):
        return None
    return union


@dataclass(frozen=True)
class WriteLayout:
    """How rows of one view are written."""

    view: FeatureView
    set_name: str
    features: tuple[str, ...]  # every feature of the view
    bins: tuple[str, ...]  # aligned with `features`
    ttl: int


def write_layout(table: ViewTable) -> WriteLayout:
    """The bins and record TTL to write rows of `table`."""
    view = table.view
    features = tuple(view.feature_names)
    return WriteLayout(
        view,
        set_name(table.project, table.name),
        features,
        tuple(bin_name(table, f) for f in features),
        record_ttl(view),
    )
