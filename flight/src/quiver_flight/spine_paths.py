"""The directory Parquet spines are named in, and the checks that keep a name inside it.

A training set may name its spine by path (``SpineSource.parquet_path``) instead
of uploading it. Such a path is relative to one configured directory,
``flight.spine_root`` (default ``<offline store>/spines``), and may never reach
anything else the server can read -- feature history, the registry, uploaded
spines, the ticket key:

- the text is checked first: relative, no ``..`` above the root, no NUL byte,
  no component over 255 bytes, no hidden names (``_x``, ``.x``);
- on a local disk, the real path (symlinks resolved) of the path and of every
  file under it must stay inside the real spine directory;
- no file may lie in a registered feature view's history.

Errors name the path as the client wrote it, never the server's directories.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs

from quiver.errors import DefinitionError, InvalidArgumentError, NotFoundError
from quiver_server.echo import clip
from quiver_server.offline.source import Listing, filesystem_and_path, list_files, resolve_path

FIELD = "spine.parquet_path"
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255


class SpineDirectory:
    """Parquet spines under one directory (a local path or a URI).

    Args:
        offline_root: The offline store root; a relative `spine_root` is under it.
        spine_root: The spine directory (``flight.spine_root``).
        apart: Directories the spine directory must neither be, hold, nor lie
            in (the registry, the uploaded spines); checked once, here.
        outside: Directories it must neither be nor hold (the offline store
            root: the spine directory may lie in it).

    Raises:
        DefinitionError: the spine directory overlaps one of those.
    """

    def __init__(
        self, offline_root: str, spine_root: str, *,
        apart: Iterable[str] = (), outside: Iterable[str] = (),
    ) -> None:
        self.location = resolve_path(offline_root, spine_root)
        self.filesystem, self.path = filesystem_and_path(self.location)
        self.local = isinstance(self.filesystem, pafs.LocalFileSystem)
        self._real = os.path.realpath(self.path) if self.local else self.path
        checks = [(other, True) for other in apart] + [(other, False) for other in outside]
        for other, both_ways in checks:
            if "://" in other or not self.local:
                continue
            real = os.path.realpath(other)
            if _inside(real, self._real) or (both_ways and _inside(self._real, real)):
                raise DefinitionError(
                    f"flight.spine_root ({self.location}) overlaps {other}: spines named by "
                    f"path would reach it; choose a directory of its own"
                )

    def listing(self, parquet_path: str, history: Iterable[str] = ()) -> Listing:
        """The files of the spine `parquet_path` names, checked to stay inside the directory.

        Args:
            parquet_path: The path as the client sent it.
            history: Locations of the registered views' history, which no
                spine file may lie in.

        Raises:
            InvalidArgumentError: a malformed path, or one leading out of the directory.
            NotFoundError: nothing at the path.
        """
        relative = check_text(parquet_path)
        location = posixpath.join(self.path, relative)
        shown = clip(parquet_path)
        if self.local and not _inside(os.path.realpath(location), self._real):
            raise _outside(shown)
        try:
            listing = list_files(location if "://" not in self.location
                                 else self.location.rstrip("/") + "/" + relative)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG, errno.ENOTDIR):
                raise InvalidArgumentError.for_field(
                    FIELD, f"{shown!r} cannot be resolved ({os.strerror(exc.errno)})",
                    reason="INVALID_SPINE_PATH",
                ) from None
            raise
        if listing is None:
            raise NotFoundError(
                f"no Parquet spine at {shown!r} in the spine directory (flight.spine_root)",
                reason="SPINE_NOT_FOUND", metadata={"parquet_path": shown},
            )
        real_history = [os.path.realpath(h) for h in history if "://" not in h] if self.local else []
        for info in listing.files:
            real = os.path.realpath(info.path) if self.local else info.path
            if self.local and not _inside(real, self._real):
                raise _outside(shown)
            if any(_inside(real, h) for h in real_history):
                raise InvalidArgumentError.for_field(
                    FIELD, f"{shown!r} holds feature history, which is not readable as a spine",
                    reason="SPINE_PATH_IS_HISTORY",
                )
        return listing

    def relative(self, path: str) -> str:
        """`path` (of a listed file) as the client may see it: relative to the directory."""
        return posixpath.relpath(path, self.path) if path.startswith(self.path) else "?"


def check_text(parquet_path: str) -> str:
    """The normalized relative path, or InvalidArgumentError naming what is wrong with it."""
    shown = clip(parquet_path)

    def bad(why: str) -> InvalidArgumentError:
        return InvalidArgumentError.for_field(FIELD, f"{shown!r}: {why}", reason="INVALID_SPINE_PATH")

    if not parquet_path:
        raise bad("name a Parquet file or directory in the spine directory")
    if "\x00" in parquet_path:
        raise bad("a path cannot hold a NUL byte")
    if len(parquet_path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise bad(f"paths are at most {MAX_PATH_BYTES} bytes")
    if "://" in parquet_path or "\\" in parquet_path or parquet_path.startswith("/"):
        raise bad("must be a relative path inside the spine directory (flight.spine_root)")
    normalized = posixpath.normpath(parquet_path)
    if normalized == "." or normalized == ".." or normalized.startswith("../"):
        raise bad("must be a relative path inside the spine directory (flight.spine_root)")
    for part in normalized.split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise bad(f"each name in a path is at most {MAX_NAME_BYTES} bytes")
        if part.startswith(("_", ".")):
            raise bad("names starting with '_' or '.' are not readable as spines")
    try:
        normalized.encode("utf-8")
    except UnicodeEncodeError:
        raise bad("a path must be valid UTF-8") from None
    return normalized


def _inside(path: str, directory: str) -> bool:
    return Path(path) == Path(directory) or Path(directory) in Path(path).parents


def _outside(shown: str) -> InvalidArgumentError:
    return InvalidArgumentError.for_field(
        FIELD, f"{shown!r} leads outside the spine directory (flight.spine_root); "
        f"symbolic links out of it are not followed", reason="SPINE_PATH_OUTSIDE",
    )
