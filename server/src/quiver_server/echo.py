"""How much of a client's input an error may repeat back.

A status travels in gRPC trailers (``grpc-message`` and the base64
``grpc-status-details-bin``), and a client refuses trailers over its metadata
limit (8 KiB by default) with RESOURCE_EXHAUSTED, hiding the real error. So
echoed input is clipped where messages are written (`clip`, `name_list`), and
`bounded` caps a whole error where the status is built, whatever a message
site did: a status stays under about 4 KiB on the wire even when every byte
of it is non-ASCII.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from quiver.errors import FieldViolation

# Longest echo of one client-chosen name (a view, a key, a column).
NAME_CHARS = 80
# Names listed before "... and N more".
LIST_NAMES = 12
# Caps of the whole status: the message in UTF-8 bytes, the violations, the
# metadata, and the serialized details (message included).
MESSAGE_BYTES = 1024
VIOLATIONS = 20
FIELD_CHARS = 160
DESCRIPTION_CHARS = 320
METADATA_ENTRIES = 16
METADATA_CHARS = 160
DETAILS_BYTES = 2048


def clip(text: str, limit: int = NAME_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text) - limit} more characters)"


def clip_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (whole characters), saying so."""
    data = text.encode()
    if len(data) <= limit:
        return text
    note = f"...({len(data) - limit} more bytes)"
    kept = data[: max(0, limit - len(note))].decode(errors="ignore")
    return kept + note


def name_list(names: Iterable[str], limit: int = LIST_NAMES) -> str:
    """Names joined with commas: at most `limit` of them, each clipped."""
    items = list(names)
    shown = ", ".join(clip(n) for n in items[:limit])
    if len(items) > limit:
        shown += f", ... and {len(items) - limit} more"
    return shown


def bounded_violations(
    violations: Sequence[FieldViolation], limit: int = VIOLATIONS
) -> list[FieldViolation]:
    """At most `limit` violations with clipped texts; a last one counts the rest."""
    kept = [
        FieldViolation(clip(v.field, FIELD_CHARS), clip(v.description, DESCRIPTION_CHARS))
        for v in violations[:limit]
    ]
    if len(violations) > limit:
        kept.append(FieldViolation("", f"{len(violations) - limit} more violation(s) not shown"))
    return kept


def bounded_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """At most `METADATA_ENTRIES` entries with clipped keys and values."""
    items = sorted(metadata.items())[:METADATA_ENTRIES]
    return {clip(k, METADATA_CHARS): clip(v, METADATA_CHARS) for k, v in items}
