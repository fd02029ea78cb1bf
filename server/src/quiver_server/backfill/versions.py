"""Versions of a computed view's history, and which windows each holds.

A view's history versions live under ``<offline root>/_backfill/<view>/vN/``,
each backfilled window in its own directory ``w-<start>-<end>/`` written under
a hidden temporary name and renamed into place. The registry's
`HistoryVersion` says which version is current and which windows it holds;
a window is recorded only after its files are in place, so a backfill that
dies leaves nothing the registry points to (the next run rewrites it).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow.fs as pafs

from quiver import FeatureView
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.offline.source import filesystem_and_path, resolve_path
from quiver_server.registry import convert

Window = tuple[datetime, datetime]
# Under the offline store root; the SDK names version 0 of a computed view here too
# (a directory never written, until the first backfill makes version 1 current).
BACKFILL_DIRECTORY = "_backfill"
_VERSION = re.compile(r"v[0-9]+")


def fingerprint(view: FeatureView, code: bytes = b"") -> str:
    """Digest of what a version's rows depend on: transformation, keys and features, and
    `code`, the source of a function transformation's module."""
    assert view.transformation is not None
    digest = hashlib.sha256()
    if code:
        digest.update(b"code\t" + hashlib.sha256(code).digest())
    digest.update(convert.transformation_to_proto(view.transformation).SerializeToString(
        deterministic=True
    ))
    for key in view.join_keys:
        digest.update(f"key\t{key.name}\t{int(key.dtype)}\n".encode())
    for feature in view.schema:
        digest.update(f"feature\t{feature.name}\t{int(feature.dtype)}\n".encode())
    return digest.hexdigest()[:32]


def version_path(view: str, version: int) -> str:
    """A version's directory, relative to the offline store root."""
    return f"{BACKFILL_DIRECTORY}/{view}/v{version}"


def versions_on_disk(offline_root: str, view: str) -> list[int]:
    """The version numbers of `view` with a directory under the offline root, sorted."""
    fs, base = filesystem_and_path(resolve_path(offline_root, f"{BACKFILL_DIRECTORY}/{view}"))
    found = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    names = [posixpath.basename(i.path) for i in found if i.type == pafs.FileType.Directory]
    return sorted(int(n[1:]) for n in names if _VERSION.fullmatch(n))


def window_directory(window: Window) -> str:
    start, end = window
    return f"w-{_stamp(start)}-{_stamp(end)}"


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def windows_of(history: pb.HistoryVersion) -> list[Window]:
    return [
        (w.start.ToDatetime(tzinfo=UTC), w.end.ToDatetime(tzinfo=UTC)) for w in history.windows
    ]


def gaps(done: Sequence[Window], window: Window) -> list[Window]:
    """The parts of `window` that no window of `done` (disjoint, sorted) covers."""
    start, end = window
    missing = []
    cursor = start
    for a, b in done:
        if b <= cursor or a >= end:
            continue
        if a > cursor:
            missing.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < end:
        missing.append((cursor, end))
    return missing


def merged(done: Sequence[Window], added: Sequence[Window]) -> list[Window]:
    """`done` and `added` as disjoint, sorted windows (touching ones joined)."""
    result: list[Window] = []
    for a, b in sorted([*done, *added]):
        if result and a <= result[-1][1]:
            result[-1] = (result[-1][0], max(result[-1][1], b))
        else:
            result.append((a, b))
    return result


def set_windows(history: pb.HistoryVersion, windows: Sequence[Window]) -> None:
    del history.windows[:]
    for start, end in windows:
        window = history.windows.add()
        window.start.FromDatetime(start)
        window.end.FromDatetime(end)


def chunk_path(view: str, version: int, window: Window) -> str:
    return posixpath.join(version_path(view, version), window_directory(window))
