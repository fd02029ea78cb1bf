"""Durable files: atomic publication, append-only logs and per-view locks.

A file is first written under a hidden temporary name, flushed to disk, then
moved (or linked) into place and its directory flushed, so a reader -- or a
process restarted after a crash -- sees either the old file or the whole new
one, never a part. Logs are JSON lines appended with one ``write`` on a file
opened with O_APPEND, so concurrent writers do not interleave their lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from quiver_server.durable import fsync_directory

TEMP_PREFIX = ".tmp-"


def write_durable(path: Path, data: bytes, *, exclusive: bool = False, mode: int = 0o644) -> bool:
    """Write `data` to `path` atomically and durably.

    Args:
        path: Destination; its directory is created.
        data: Bytes to store.
        exclusive: Fail (return False) instead of replacing an existing file.
        mode: Permissions of the new file (before the umask).

    Returns:
        Whether the file was written (always True unless `exclusive`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}-{path.name}"
    with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        if exclusive:
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
        else:
            os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return True


def records_in(directory: Path, suffix: str = ".json") -> list[str]:
    """Names of the records in `directory`, sorted, without the temporary files
    `write_durable` leaves when killed mid-write (torn, or whole but never moved
    into place); a missing directory has none."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to an append-only log, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a log (a torn last line from a crash is skipped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


@contextlib.contextmanager
def locked(
    path: Path, *, shared: bool = False, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold an advisory lock on `path` (created if needed), exclusive unless `shared`.

    Erasure and compaction of one view take its lock, so they never rewrite
    the same files at once; the lock goes with the process, even on kill -9.
    `on_wait` is called once if the lock is held by someone else, before waiting.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)
