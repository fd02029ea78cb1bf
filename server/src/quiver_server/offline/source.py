"""Locating a feature view's Parquet history.

Paths in a `ParquetSource` are relative to the offline store root unless they
are absolute or a URI (s3://, gs://, file://...), which pyarrow's filesystems
resolve. Directories are read recursively; hive-style partition directories
(`date=2024-01-01/`) are understood.
"""

from __future__ import annotations

import os

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


def view_dataset(offline_root: str, view: FeatureView) -> ds.Dataset:
    """The Parquet dataset holding `view`'s history.

    Raises:
        FailedPreconditionError: the source path does not exist.
    """
    location = resolve_path(offline_root, view.source.path)
    fs, path = filesystem_and_path(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FailedPreconditionError(
            f"feature view {view.name!r}: source {location!r} does not exist",
            reason="SOURCE_NOT_FOUND",
        )
    return ds.dataset(
        path,
        filesystem=fs,
        format="parquet",
        partitioning="hive",
        exclude_invalid_files=False,
        ignore_prefixes=[".", "_"],
    )
