"""Locating a feature view's Parquet history.

Paths in a `ParquetSource` are relative to the offline store root unless they
are absolute or a URI (s3://, gs://, file://...), which pyarrow's filesystems
resolve. Directories are read recursively; hive-style partition directories
(`date=2024-01-01/`) are understood.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import pyarrow.dataset as ds
import pyarrow.fs as pafs

from quiver import FeatureView
from quiver.errors import FailedPreconditionError


def resolve_path(offline_root: str, path: str) -> str:
    """The absolute path or URI of `path` under `offline_root`."""
    if "://" in path or os.path.isabs(path):
        return path
    if "://" in offline_root:
        return offline_root.rstrip("/") + "/" + path
    return os.path.join(offline_root, path)


def filesystem_and_path(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path within it for a local path or URI."""
    if "://" in location:
        fs, inner = pafs.FileSystem.from_uri(location)
        return fs, inner
    return pafs.LocalFileSystem(), os.path.abspath(location)


@dataclass(frozen=True)
class Listing:
    """The files under a path at one moment, as pyarrow's dataset discovery sees them."""

    filesystem: pafs.FileSystem
    base: str
    is_directory: bool
    files: tuple[pafs.FileInfo, ...]

    @property
    def fingerprint(self) -> str:
        """Changes when any file is added, removed, resized or rewritten."""
        digest = hashlib.sha256()
        for info in self.files:
            digest.update(f"{info.path}\t{info.size}\t{info.mtime_ns}\n".encode())
        return digest.hexdigest()[:32]


def list_files(location: str) -> Listing | None:
    """The files at `location` (a file, or a directory read recursively), or None.

    Names starting with "." or "_" are skipped at any depth, as pyarrow's dataset
    discovery skips them (temporary files of an atomic write, metadata files).
    """
    fs, path = filesystem_and_path(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.File:
        return Listing(fs, path, False, (info,))
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(
        (i for i in found if i.type == pafs.FileType.File and _visible(path, i.path)),
        key=lambda i: str(i.path),
    )
    return Listing(fs, path, True, tuple(files))


def _visible(base: str, path: str) -> bool:
    relative = path[len(base):].lstrip("/")
    return not any(part.startswith((".", "_")) for part in relative.split("/"))


def view_dataset(offline_root: str, view: FeatureView) -> ds.Dataset:
    """The Parquet dataset holding `view`'s history.

    Raises:
        FailedPreconditionError: the source path does not exist.
    """
    location = resolve_path(offline_root, view.source.path)
    fs, path = filesystem_and_path(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise source_not_found(view, location)
    return ds.dataset(
        path,
        filesystem=fs,
        format="parquet",
        partitioning="hive",
        exclude_invalid_files=False,
        ignore_prefixes=[".", "_"],
    )


def source_not_found(view: FeatureView, location: str) -> FailedPreconditionError:
    """The error for a view whose history is not there (yet)."""
    if view.transformation is not None:
        return FailedPreconditionError(
            f"feature view {view.name!r} is computed by its transformation and has no history "
            f"yet; run `quiver backfill {view.name} START END`",
            reason="SOURCE_NOT_FOUND", metadata={"feature_view": view.name},
        )
    return FailedPreconditionError(
        f"feature view {view.name!r}: source {location!r} does not exist",
        reason="SOURCE_NOT_FOUND", metadata={"feature_view": view.name},
    )
