"""Making renames and new files survive a crash or power loss (local disks).

A file's bytes reach the disk with fsync on the file; the name pointing at it
(a rename, a link, a new directory) only with fsync on the directory holding
the name. Writers of the offline history and of registry versions do both.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    """Flush the bytes of file `path` to disk (before renaming it into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str | Path) -> None:
    """Flush the entries of directory `path` (new, renamed or removed names) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(directory: str) -> None:
    """Create `directory` and its missing parents, each made durable in its parent."""
    missing = []
    path = directory
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue  # made meanwhile by a concurrent writer, which syncs its parent
        fsync_directory(os.path.dirname(path))
