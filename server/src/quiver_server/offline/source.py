"""Locating a feature view's Parquet history.

Paths in a `ParquetSource` are relative to the offline store root unless they
are absolute or a URI (s3://, gs://, file://...), which pyarrow's filesystems
resolve. Directories are read recursively; hive-style partition directories
(`date=2024-01-01/`) are understood.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from quiver import FeatureView
from quiver.errors import FailedPreconditionError
from quiver_server.echo import clip


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


def drop_checksum(fs: pafs.FileSystem, path: str) -> None:
    """Delete the checksum file Hadoop's local file system keeps beside `path`, if any.

    Spark writing to a local disk leaves ``.<name>.crc`` beside each file and
    checks it on every read: one left beside a file rewritten by other means
    makes every later Spark read of that file fail. Without it, Spark reads the
    file unchecked.
    """
    directory, name = posixpath.split(path)
    sidecar = posixpath.join(directory, f".{name}.crc")
    if fs.get_file_info(sidecar).type == pafs.FileType.File:
        fs.delete_file(sidecar)


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


# -- files that do not read ------------------------------------------------------------


def history_file_name(view: FeatureView, base: str, is_directory: bool, path: str) -> str:
    """How errors name a history file: the view's source path (relative to the offline
    root, as the definition gives it) and the file's place under it, never the
    server's absolute path."""
    if not is_directory:
        return view.source.path
    return f"{view.source.path.rstrip('/')}/{path[len(base):].lstrip('/')}"


@contextmanager
def reading_history(
    view: FeatureView,
    filesystem: pafs.FileSystem,
    base: str,
    is_directory: bool,
    paths: Sequence[str],
) -> Iterator[None]:
    """Read `view`'s history inside this guard: a file that does not read is named.

    pyarrow reports a torn or corrupt Parquet file without saying which one (or
    with the server's absolute path), as ArrowInvalid or as an OSError that
    would read as a store outage. When a read fails, the files are probed: the
    first that does not read becomes FailedPreconditionError (reason
    UNREADABLE_HISTORY) naming the file and the view. When every file reads, or
    none does because the store itself is unreachable, the error is re-raised.
    """
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        found = _unreadable(filesystem, paths, str(exc))
        if found is None:
            raise
        path, problem = found
        name = history_file_name(view, base, is_directory, path)
        reason = clip(" ".join(str(problem).replace(path, name).split()), 300)
        raise FailedPreconditionError(
            f"feature view {view.name!r}: history file {name!r} cannot be read ({reason}); "
            f"restore it or move it out of the source",
            reason="UNREADABLE_HISTORY",
            metadata={"feature_view": view.name, "file": clip(name, 160)},
        ) from None


def reading_listed(view: FeatureView, listing: Listing | None) -> AbstractContextManager[None]:
    """`reading_history` over the files of `listing` (nothing to name when there is none)."""
    if listing is None:
        return nullcontext()
    paths = [info.path for info in listing.files]
    return reading_history(view, listing.filesystem, listing.base, listing.is_directory, paths)


def _unreadable(
    filesystem: pafs.FileSystem, paths: Sequence[str], hint: str
) -> tuple[str, BaseException] | None:
    """The first file that does not read, and why; footers first, then whole files."""
    named = [p for p in paths if p in hint]
    ordered = list(dict.fromkeys([*named, *paths]))

    def footer(path: str) -> None:
        pq.read_metadata(path, filesystem=filesystem)

    def whole(path: str) -> None:
        for _ in pq.ParquetFile(path, filesystem=filesystem).iter_batches(batch_size=65_536):
            pass

    local = isinstance(filesystem, pafs.LocalFileSystem)
    for read in (footer, whole):
        found = _probe(ordered, read, local)
        if found is not None:
            return found
    return None


def _probe(
    paths: Sequence[str], read: Callable[[str], None], local: bool
) -> tuple[str, BaseException] | None:
    """A file whose content is bad: it fails to parse (ArrowInvalid), or fails with an
    OSError that is no local I/O error (no errno) or while another file reads fine;
    an error every file shares is the store's, not a file's."""
    first: tuple[str, BaseException] | None = None
    readable = False
    for path in paths:
        try:
            read(path)
        except pa.ArrowInvalid as exc:
            return path, exc
        except (pa.ArrowException, OSError) as exc:
            if readable or (local and getattr(exc, "errno", None) is None):
                return path, exc
            first = first or (path, exc)
            continue
        readable = True
        if first is not None:
            return first
    return None
