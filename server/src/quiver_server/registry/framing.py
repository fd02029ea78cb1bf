"""The bytes of one registry version file, which verify themselves.

A version file is a header and the serialized `quiver.registry.v1.Registry`::

    magic    4 bytes  07 'Q' 'V' 'R'
    format   1 byte   1
    length   8 bytes  big-endian length of the payload
    sha256  32 bytes  of the payload
    payload           the Registry message

so a truncated, extended or altered file is refused instead of parsing into a
partial registry (protobuf parses many truncations of a message silently). The
first byte, 0x07, is a protobuf tag of field 0 with wire type 7, which no
protobuf parser accepts: a reader that predates framing fails loudly on a
framed file rather than misreading it.

Files written before framing (a bare Registry message) are still read: their
first byte is the tag of field 1 (``version``). They carry no checksum, so they
are accepted only when they hold their own version number and the fields every
commit writes, including ``cause``, the last field serialized: a file cut at a
field boundary loses it, and a file cut inside a field does not parse. Such a
file cannot hold permissions (field 9), on-demand views or parameter sets
(fields 20, 21), all serialized after ``cause``: they came after framing, so an
unframed file with them is refused. Byte
flips inside such a file cannot be detected; `quiver apply` or a materialization
writes a new, framed version on top of it.
"""

from __future__ import annotations

import hashlib
import struct

from google.protobuf.message import DecodeError

from quiver.registry.v1 import registry_pb2 as pb

MAGIC = b"\x07QVR"
FORMAT = 1
_HEADER = struct.Struct(">4sBQ32s")


class CorruptVersion(Exception):
    """A version file that does not verify; the message says how."""


def encode(proto: pb.Registry) -> bytes:
    """The framed bytes of `proto`."""
    payload = proto.SerializeToString()
    return _HEADER.pack(MAGIC, FORMAT, len(payload), hashlib.sha256(payload).digest()) + payload


def decode(data: bytes, version: int) -> pb.Registry:
    """The Registry in a version file's bytes, verified.

    Args:
        data: The whole file.
        version: The version its name says it holds.

    Raises:
        CorruptVersion: the file does not verify.
    """
    framed = data[:1] == MAGIC[:1]  # an unframed file starts with the tag of `version`
    proto = _decode_framed(data) if framed else _decode_legacy(data)
    if proto.version != version:
        raise CorruptVersion(f"it holds version {proto.version}, not {version}")
    return proto


def _decode_framed(data: bytes) -> pb.Registry:
    if len(data) < _HEADER.size:
        raise CorruptVersion(f"truncated: {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, file_format, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptVersion("not a registry version file (wrong magic bytes)")
    if file_format != FORMAT:
        raise CorruptVersion(f"format {file_format} is not one this Quiver reads (it reads {FORMAT})")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise CorruptVersion(
            f"{'truncated' if len(payload) < length else 'extended'}: the header says "
            f"{length} bytes of registry, the file holds {len(payload)}"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptVersion("checksum mismatch: the file's bytes were altered")
    proto = pb.Registry()
    try:
        proto.ParseFromString(payload)
    except DecodeError as exc:  # pragma: no cover - a matching checksum over bad protobuf
        raise CorruptVersion(f"does not decode: {exc}") from None
    return proto


def _decode_legacy(data: bytes) -> pb.Registry:
    proto = pb.Registry()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise CorruptVersion(f"does not decode: {exc}") from None
    if not proto.cause or not proto.HasField("created_at"):
        raise CorruptVersion(
            "incomplete: an unframed file without the fields every version has (truncated?)"
        )
    if proto.permissions or proto.on_demand_feature_views or proto.transform_parameters:
        # Versions with these are always framed; `cause` would not be last here.
        raise CorruptVersion(
            "an unframed file cannot hold permissions, on-demand views or parameter sets "
            "(not a genuine old version)"
        )
    return proto
