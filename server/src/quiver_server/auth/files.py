"""Noticing that mounted files changed (Kubernetes rewrites Secrets in place).

A Secret volume updates by swapping a symlink, so the file's inode and
modification time change; a `FileWatcher` compares those, at most once per
interval, so callers on a hot path pay one clock read between checks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

Signature = tuple[tuple[int, int, int] | None, ...]


def signature(paths: Sequence[str]) -> Signature:
    """(inode, mtime, size) of each file, None for a missing one."""
    result: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            result.append(None)
        else:
            result.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(result)


class FileWatcher:
    """Says whether any of `paths` changed since the last time it said so."""

    def __init__(self, paths: Sequence[str], interval: float) -> None:
        self.paths = list(paths)
        self.interval = interval
        self._seen = signature(self.paths)
        self._next = time.monotonic() + interval
        self._lock = threading.Lock()

    def changed(self, *, force: bool = False) -> bool:
        """True once per change; checks the files only when the interval passed (or `force`)."""
        now = time.monotonic()
        if not force and now < self._next:
            return False
        with self._lock:
            self._next = now + self.interval
            current = signature(self.paths)
            if current == self._seen:
                return False
            self._seen = current
            return True
