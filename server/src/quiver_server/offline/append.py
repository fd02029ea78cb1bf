"""Appending pushed rows to a view's offline history.

Each push becomes a new Parquet file under the view's source directory, in a
date partition (`date=YYYY-MM-DD/`, by event time, UTC). The file is written
under a hidden temporary name and renamed into place, so readers never see a
partial file. On a local disk the file is flushed to the disk (fsync) before
the rename and its directory after it (and the parent of any directory created
for it), so a crash or power loss leaves either the whole file or none, never
a torn one. Names start with the push time (``push-<ns since epoch>-<random>``),
so within a partition later pushes sort after earlier ones: "last in source
order", the join's final tie-break, is then the last push, and compaction
(which merges neighbouring files) never sees a new file appear in the middle
of a run it merges. Files are rewritten only by erasure and compaction.
"""

from __future__ import annotations

import os
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from quiver import FeatureView
from quiver.errors import FailedPreconditionError, UnavailableError
from quiver_server.durable import fsync_directory, make_directories
from quiver_server.offline.source import filesystem_and_path, resolve_path


def append_history(offline_root: str, view: FeatureView, rows: pa.Table) -> list[str]:
    """Write `rows` (named by feature/join key, as pushed) as new files; returns their paths.

    Columns are renamed back to the source's column names when the view maps them.
    """
    fs, base = filesystem_and_path(resolve_path(offline_root, view.source.path))
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        raise FailedPreconditionError(
            f"feature view {view.name!r}: offline source {view.source.path!r} is a single file; "
            f"pushing offline needs a directory source",
            reason="OFFLINE_SOURCE_NOT_A_DIRECTORY",
        )
    to_source = {name: source for source, name in view.source.field_mapping.items()}
    rows = rows.rename_columns([to_source.get(n, n) for n in rows.column_names])
    timestamps = rows[view.source.timestamp_field]
    days = pc.strftime(timestamps, format="%Y-%m-%d")
    written = []
    for day in sorted(set(days.to_pylist())):
        part = rows.filter(pc.equal(days, day))
        directory = f"{base}/date={day}"
        name = f"push-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        try:
            if isinstance(fs, pafs.LocalFileSystem):
                _write_local(part, directory, name)
            else:  # object stores publish a whole object or nothing
                fs.create_dir(directory, recursive=True)
                tmp = f"{directory}/.{name}.tmp"
                pq.write_table(part, tmp, filesystem=fs)
                fs.move(tmp, f"{directory}/{name}")
        except OSError as exc:
            raise UnavailableError(
                f"feature view {view.name!r}: cannot write its offline history under "
                f"{view.source.path!r}: {exc.strerror or type(exc).__name__}",
                reason="OFFLINE_WRITE_FAILED",
                metadata={"feature_view": view.name},
            ) from None
        written.append(f"{directory}/{name}")
    return written


def _write_local(rows: pa.Table, directory: str, name: str) -> None:
    """Write `rows` to directory/name durably: fsync the file, rename, fsync the directory."""
    make_directories(directory)
    tmp, final = os.path.join(directory, f".{name}.tmp"), os.path.join(directory, name)
    try:
        with open(tmp, "wb") as file:
            pq.write_table(rows, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(directory)

