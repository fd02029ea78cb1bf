"""Appending pushed rows to a view's offline history.

Each push becomes a new Parquet file under the view's source directory, in a
date partition (`date=YYYY-MM-DD/`, by event time, UTC). The file is written
under a hidden temporary name and renamed into place, so readers never see a
partial file. Names start with the push time (``push-<ns since epoch>-<random>``),
so within a partition later pushes sort after earlier ones: "last in source
order", the join's final tie-break, is then the last push, and compaction
(which merges neighbouring files) never sees a new file appear in the middle
of a run it merges. Files are rewritten only by erasure and compaction.
"""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from quiver import FeatureView
from quiver.errors import FailedPreconditionError
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
        fs.create_dir(directory, recursive=True)
        name = f"push-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        tmp, final = f"{directory}/.{name}.tmp", f"{directory}/{name}"
        pq.write_table(part, tmp, filesystem=fs)
        fs.move(tmp, final)
        written.append(final)
    return written
