"""Compaction: merge a view's small history files without changing any result.

Offline pushes add one small file each, and a training set pays for every
file it opens. Compaction merges runs of small files into one file, keeping
every row and the order of rows. The order matters: among history rows with
the same key, event time and created time, the one last in source order
(files sorted by path, rows in file order) wins a point-in-time join. So
only files that are next to each other in that order and in the same
directory are merged, their rows are written in order, and the merged file
takes the place -- the name -- of the first file of the run; the others are
then deleted in order. At every step, including after a kill midway, the
history read in source order yields the same winners.

Steps for one run of files ``f1..fk`` (holding the view's lock):

1. write the merged rows to a hidden temporary file next to ``f1``; flush it;
2. record a journal (``governance/compactions/pending/<id>.json``);
3. rename the temporary file over ``f1`` (atomic) and flush the directory;
4. delete ``f2..fk`` in order; log ``merged``; drop the journal.

A rerun finishes any journal it finds (step 3 if the temporary file is still
there, then step 4) and deletes temporaries that never got a journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import structlog

from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver_server.durable import fsync_directory, fsync_file
from quiver_server.governance.files import append_line, locked, records_in, write_durable
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.progress import RewriteCallback, RewriteProgress, ignore
from quiver_server.offline.source import Listing, list_files, resolve_path
from quiver_server.registry.snapshot import Snapshot

log = structlog.get_logger(__name__)

DEFAULT_TARGET_BYTES = 128 << 20
_TEMP_MARK = ".compact-"
_ROW_GROUP_ROWS = 1 << 20


@dataclass
class CompactionResult:
    """What compacting one view did."""

    compaction_id: str
    feature_view: str
    files_before: int
    files_after: int
    groups: list[list[str]] = field(default_factory=list)


def compact_view(
    paths: GovernancePaths, snapshot: Snapshot, view_name: str, by: str,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    progress: RewriteCallback = ignore,
) -> CompactionResult:
    """Merge runs of small files of `view_name`'s history.

    Args:
        paths: The governance layout.
        snapshot: Registry version defining the view.
        view_name: The feature view.
        by: The principal recorded in the log.
        target_bytes: Files at least this large are left alone; a merged file
            grows up to about this size.
        progress: Called as groups of files are merged.

    Raises:
        NotFoundError: no such view.
        InvalidArgumentError: a target size under 1 byte.
        FailedPreconditionError: the view's source does not exist.
    """
    view = snapshot.feature_view(view_name)
    if target_bytes < 1:
        raise InvalidArgumentError.for_field("target_bytes", "must be at least 1")
    location = resolve_path(paths.offline_root, view.source.path)
    compaction_id = f"c-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    with locked(paths.view_lock(view.name)):
        listing = settle(paths, view.name, location)
        if listing is None:
            raise FailedPreconditionError(
                f"feature view {view.name!r}: source {location!r} does not exist",
                reason="SOURCE_NOT_FOUND", metadata={"feature_view": view.name},
            )
        fs, base = listing.filesystem, listing.base
        result = CompactionResult(compaction_id, view.name, len(listing.files), len(listing.files))
        if not listing.is_directory:
            return result
        groups = _groups(fs, list(listing.files), target_bytes)
        for done, group in enumerate(groups):
            progress(RewriteProgress("compaction", view.name, done, len(groups)))
            journal = _Journal(
                compaction_id=f"{compaction_id}-{len(result.groups)}", view=view.name,
                files=[_relative(base, p) for p in group], base=base, temp="",
            )
            _merge(paths, fs, journal)
            result.groups.append(journal.files)
            result.files_after -= len(group) - 1
        progress(RewriteProgress("compaction", view.name, len(groups), len(groups)))
        append_line(paths.compaction_log, {
            "event": "completed", "compaction_id": compaction_id, "view": view.name,
            "at": datetime.now(UTC).isoformat(), "by": by, "files_before": result.files_before,
            "files_after": result.files_after,
        })
    log.info("compacted", feature_view=view.name, files_before=result.files_before,
             files_after=result.files_after)
    return result


@dataclass
class _Journal:
    compaction_id: str
    view: str
    files: list[str]  # relative to base, in source order; the first one is replaced
    base: str
    temp: str  # absolute

    def path(self, paths: GovernancePaths) -> Any:
        return paths.compactions_pending / f"{self.compaction_id}.json"

    def absolute(self, relative: str) -> str:
        return posixpath.join(self.base, relative)


def settle(paths: GovernancePaths, view: str, location: str) -> Listing | None:
    """Finish what a killed compaction of `view` left, then list its files.

    Journaled merges are swapped in and their inputs deleted; merged files
    that never got a journal are deleted. Erasure calls this before it
    rewrites a view, or a merge written before the erasure would keep the
    erased rows (on disk, under a hidden name) and a later run would swap it
    in. The caller holds the view's lock.

    Returns:
        The view's files afterwards, or None when its source does not exist.
    """
    resume(paths, view)
    listing = list_files(location)
    if listing is not None and listing.is_directory:
        _remove_stale_temps(listing.filesystem, listing.base)
    return listing


def resume(paths: GovernancePaths, view: str) -> int:
    """Finish the compactions of `view` a killed run left journaled; returns how many.

    The caller holds the view's lock.
    """
    done = 0
    for name in records_in(paths.compactions_pending):
        data = json.loads((paths.compactions_pending / name).read_bytes())
        if data["view"] != view:
            continue
        journal = _Journal(**data)
        _finish(paths, pafs.LocalFileSystem(), journal)
        done += 1
    return done


def _groups(fs: pafs.FileSystem, infos: list[pafs.FileInfo], target: int) -> list[list[str]]:
    """Runs of consecutive small files in one directory, each to become one file."""
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    schema: pa.Schema | None = None

    def close() -> None:
        nonlocal current, size, schema
        if len(current) > 1:
            groups.append(current)
        current, size, schema = [], 0, None

    for info in infos:
        small = info.size is not None and info.size < target
        file_schema = _schema(fs, info.path) if small else None
        fits = (
            small and current
            and posixpath.dirname(current[0]) == posixpath.dirname(info.path)
            and size + (info.size or 0) <= target
            and schema is not None and file_schema is not None and schema.equals(file_schema)
        )
        if not fits:
            close()
        if small:
            current.append(info.path)
            size += info.size or 0
            schema = file_schema
    close()
    return groups


def _schema(fs: pafs.FileSystem, path: str) -> pa.Schema:
    with fs.open_input_file(path) as handle:
        return pq.ParquetFile(handle).schema_arrow.remove_metadata()


def _merge(paths: GovernancePaths, fs: pafs.FileSystem, journal: _Journal) -> None:
    first = journal.absolute(journal.files[0])
    directory, name = posixpath.split(first)
    journal.temp = posixpath.join(directory, f"{_TEMP_MARK}{secrets.token_hex(4)}-{name}")
    with fs.open_input_file(first) as handle:
        schema = pq.ParquetFile(handle).schema_arrow
    rows = 0
    pending: list[pa.Table] = []
    buffered = 0
    with pq.ParquetWriter(journal.temp, schema, filesystem=fs) as writer:
        # Small inputs are gathered into large row groups: one row group per
        # input file would leave the merged file as slow to read as before.
        for relative in journal.files:
            with fs.open_input_file(journal.absolute(relative)) as handle:
                table = pq.ParquetFile(handle).read()
            rows += table.num_rows
            pending.append(table.replace_schema_metadata(schema.metadata))
            buffered += table.num_rows
            if buffered >= _ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending), row_group_size=_ROW_GROUP_ROWS)
                pending, buffered = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=_ROW_GROUP_ROWS)
    if isinstance(fs, pafs.LocalFileSystem):
        fsync_file(journal.temp)
    write_durable(journal.path(paths), json.dumps(journal.__dict__).encode())
    _finish(paths, fs, journal, rows)


def _finish(paths: GovernancePaths, fs: pafs.FileSystem, journal: _Journal, rows: int = -1) -> None:
    first = journal.absolute(journal.files[0])
    directory = posixpath.dirname(first)
    if fs.get_file_info(journal.temp).type == pafs.FileType.File:
        if isinstance(fs, pafs.LocalFileSystem):
            os.replace(journal.temp, first)
            fsync_directory(directory)
        else:
            fs.move(journal.temp, first)
    # Later files go in order, so the history read in source order keeps its winners.
    for relative in journal.files[1:]:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(journal.absolute(relative))
    if isinstance(fs, pafs.LocalFileSystem):
        fsync_directory(directory)
    append_line(paths.compaction_log, {
        "event": "merged", "compaction_id": journal.compaction_id, "view": journal.view,
        "at": datetime.now(UTC).isoformat(), "files": journal.files, "into": journal.files[0],
        "rows": rows,
    })
    journal.path(paths).unlink(missing_ok=True)


def _relative(base: str, path: str) -> str:
    return path[len(base):].lstrip("/")


def _remove_stale_temps(fs: pafs.FileSystem, base: str) -> None:
    """Delete merged files a killed run wrote but never journaled."""
    found = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    for info in found:
        if info.type == pafs.FileType.File and posixpath.basename(info.path).startswith(_TEMP_MARK):
            with contextlib.suppress(OSError):
                fs.delete_file(info.path)
