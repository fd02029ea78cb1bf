"""Spines: uploaded ones stored under the offline store, and Parquet ones in it.

An uploaded spine is one Arrow IPC file, ``<offline root>/_spines/<id>.arrow``,
so every replica that shares the offline store can read it. Arrow IPC rather
than Parquet because a spine is written once and read back at once, by row
range: writing it is a copy (Parquet encoding cost more than the rest of an
upload), and reading a range touches only the record batches in it (memory
mapped on a local disk). Batches hold exactly `batch_rows` rows (recorded in
the file), so a row range maps to batches without reading any. The expiry is
recorded in the file too; expired spines are refused and swept away. The id
is 128 random bits, so it is also the capability to read the spine.

A spine may also be a Parquet file or directory inside the offline store;
those are read by row group.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import structlog

from quiver.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from quiver_server.offline.source import filesystem_and_path, list_files, resolve_path

log = structlog.get_logger(__name__)

SPINE_DIRECTORY = "_spines"
EXPIRES_KEY = b"quiver.spine.expires_at_us"
BATCH_ROWS_KEY = b"quiver.spine.batch_rows"
_SUFFIX = ".arrow"
_SPINE_ID = re.compile(r"^[0-9a-f]{32}$")
_TEMP_PREFIX = ".tmp-"
_SWEEP_EVERY_SECONDS = 60.0


class Spine:
    """A spine's schema and rows, and what is known about it without reading rows."""

    name: str
    schema: pa.Schema
    num_rows: int
    expires_at: float | None
    fingerprint: str

    def read(self, offset: int, count: int) -> pa.Table:
        """Rows ``[offset, offset + count)`` in spine order."""
        raise NotImplementedError

    def null_count(self, column: str) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class UploadedSpine(Spine):
    """A spine uploaded with do_put: one Arrow IPC file of fixed-size batches."""

    name: str
    schema: pa.Schema
    num_rows: int
    expires_at: float | None
    fingerprint: str
    filesystem: pafs.FileSystem
    path: str
    batch_rows: int

    @property
    def spine_id(self) -> str:
        # An uploaded spine's id is also its fingerprint: its file never changes.
        return self.fingerprint

    def read(self, offset: int, count: int) -> pa.Table:
        if count <= 0:
            return self.schema.empty_table()
        reader = self._reader()
        first, last = offset // self.batch_rows, (offset + count - 1) // self.batch_rows
        batches = [reader.get_batch(i) for i in range(first, last + 1)]
        table = pa.Table.from_batches(batches, schema=self.schema)
        return table.slice(offset - first * self.batch_rows, count)

    def null_count(self, column: str) -> int:
        reader = self._reader()
        index = self.schema.get_field_index(column)
        # Null counts live in the batches' metadata: no column data is read.
        return sum(reader.get_batch(i).column(index).null_count
                   for i in range(reader.num_record_batches))

    def _reader(self) -> pa.ipc.RecordBatchFileReader:
        return _open_ipc(self.filesystem, self.path)


def _open_ipc(fs: pafs.FileSystem, path: str) -> pa.ipc.RecordBatchFileReader:
    # A local file is memory mapped: batches are views of the page cache. The
    # map lives as long as any batch read from it.
    source = pa.memory_map(path) if isinstance(fs, pafs.LocalFileSystem) else fs.open_input_file(path)
    return ipc.open_file(source)


@dataclass(frozen=True)
class SpineFile:
    """One Parquet file of a spine and its rows per row group."""

    path: str
    row_groups: tuple[int, ...]

    @property
    def rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class ParquetSpine(Spine):
    """A Parquet file or directory in the offline store, read by row group."""

    name: str
    schema: pa.Schema
    num_rows: int
    expires_at: float | None
    fingerprint: str
    filesystem: pafs.FileSystem
    files: tuple[SpineFile, ...]

    def read(self, offset: int, count: int) -> pa.Table:
        pieces = []
        start = 0
        for file in self.files:
            stop = start + file.rows
            if stop > offset and start < offset + count:
                groups, first = [], None
                group_start = start
                for i, rows in enumerate(file.row_groups):
                    group_stop = group_start + rows
                    if group_stop > offset and group_start < offset + count:
                        groups.append(i)
                        first = group_start if first is None else first
                    group_start = group_stop
                with self.filesystem.open_input_file(file.path) as handle:
                    table = pq.ParquetFile(handle).read_row_groups(groups)
                assert first is not None
                skip = max(offset - first, 0)
                pieces.append(table.slice(skip, offset + count - first - skip))
            start = stop
        if not pieces:
            return self.schema.empty_table()
        return pa.concat_tables([p.cast(self.schema) if p.schema != self.schema else p for p in pieces])

    def null_count(self, column: str) -> int:
        """Nulls in `column`, from Parquet statistics where they exist."""
        nulls = 0
        for file in self.files:
            with self.filesystem.open_input_file(file.path) as handle:
                parquet = pq.ParquetFile(handle)
                metadata = parquet.metadata
                index = _column_index(metadata, column)
                for group in range(metadata.num_row_groups):
                    stats = metadata.row_group(group).column(index).statistics if index >= 0 else None
                    if stats is not None and stats.has_null_count:
                        nulls += stats.null_count
                    else:
                        nulls += parquet.read_row_group(group, columns=[column])[column].null_count
        return nulls


def _column_index(metadata: pq.FileMetaData, column: str) -> int:
    for i in range(metadata.num_columns):
        if metadata.schema.column(i).path == column:
            return i
    return -1


class SpineStore:
    """Uploaded spines under ``<offline root>/_spines``, and spines in the offline store.

    Args:
        offline_root: The offline store root (a path or URI).
        max_rows: Most rows a spine may have.
        ttl_seconds: How long an uploaded spine is kept.
        batch_rows: Rows per record batch of uploaded spines.
        clock: Seconds since the epoch (tests pass a fake one).
    """

    def __init__(
        self,
        offline_root: str,
        *,
        max_rows: int,
        ttl_seconds: int,
        batch_rows: int = 65_536,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.offline_root = offline_root
        self.max_rows = max_rows
        self.ttl_seconds = ttl_seconds
        self.batch_rows = batch_rows
        self.clock = clock
        self.filesystem, self.directory = filesystem_and_path(
            resolve_path(offline_root, SPINE_DIRECTORY)
        )
        self._last_sweep = 0.0

    def put(self, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> UploadedSpine:
        """Store an uploaded spine.

        Raises:
            ResourceExhaustedError: more than `max_rows` rows.
            InvalidArgumentError: a spine without columns.
        """
        if len(schema) == 0:
            raise InvalidArgumentError.for_field(
                "spine", "the spine has no columns", reason="SPINE_EMPTY_SCHEMA"
            )
        self.sweep()
        self.filesystem.create_dir(self.directory, recursive=True)
        spine_id = secrets.token_hex(16)
        expires_at = self.clock() + self.ttl_seconds
        stored = schema.with_metadata({
            **(schema.metadata or {}),
            EXPIRES_KEY: str(int(expires_at * 1_000_000)).encode(),
            BATCH_ROWS_KEY: str(self.batch_rows).encode(),
        })
        temp = posixpath.join(self.directory, f"{_TEMP_PREFIX}{spine_id}{_SUFFIX}")
        rows = 0
        try:
            with self.filesystem.open_output_stream(temp) as sink, ipc.new_file(sink, stored) as writer:
                for batch in _fixed_size(batches, self.batch_rows):
                    rows += batch.num_rows
                    if rows > self.max_rows:
                        raise _too_large(self.max_rows)
                    writer.write_batch(batch)
            self.filesystem.move(temp, self._path(spine_id))
        except BaseException:
            _delete_quietly(self.filesystem, temp)
            raise
        log.info("spine stored", spine_id=spine_id, rows=rows)
        return self.open(spine_id)

    def open(self, spine_id: str) -> UploadedSpine:
        """An uploaded spine.

        Raises:
            InvalidArgumentError: not a spine id.
            NotFoundError: no such spine, or it expired.
        """
        if not _SPINE_ID.match(spine_id):
            raise InvalidArgumentError.for_field(
                "spine.spine_id", f"{spine_id!r} is not a spine id (32 hex digits from do_put)",
                reason="INVALID_SPINE_ID",
            )
        path = self._path(spine_id)
        try:
            reader = _open_ipc(self.filesystem, path)
        except FileNotFoundError:
            raise _not_found(spine_id) from None
        metadata = reader.schema.metadata or {}
        expires_at = int(metadata.get(EXPIRES_KEY, b"0")) / 1_000_000
        if self.clock() >= expires_at:
            _delete_quietly(self.filesystem, path)
            raise NotFoundError(
                f"spine {spine_id!r} expired (spines are kept {self.ttl_seconds} s); upload it again",
                reason="SPINE_EXPIRED", metadata={"spine_id": spine_id},
            )
        batch_rows = int(metadata.get(BATCH_ROWS_KEY, b"1"))
        batches = reader.num_record_batches
        rows = 0 if batches == 0 else (batches - 1) * batch_rows + reader.get_batch(batches - 1).num_rows
        return UploadedSpine(f"spine {spine_id!r}", _public(reader.schema), rows, expires_at or None,
                             spine_id, self.filesystem, path, batch_rows)

    def open_path(self, parquet_path: str) -> ParquetSpine:
        """A Parquet file or directory inside the offline store used as a spine.

        Raises:
            InvalidArgumentError: the path leaves the offline store, or its files
                do not share one schema.
            NotFoundError: nothing at the path.
        """
        field = "spine.parquet_path"
        normalized = posixpath.normpath(parquet_path) if parquet_path else ""
        if (not parquet_path or "://" in parquet_path or normalized.startswith(("/", ".."))
                or normalized == "." or "\\" in parquet_path):
            raise InvalidArgumentError.for_field(
                field, f"{parquet_path!r} must be a relative path inside the offline store",
                reason="INVALID_SPINE_PATH",
            )
        if any(part.startswith(("_", ".")) for part in normalized.split("/")):
            # Quiver's own files (uploaded spines, the ticket key) live there.
            raise InvalidArgumentError.for_field(
                field, f"{parquet_path!r}: names starting with '_' or '.' are not readable as spines",
                reason="INVALID_SPINE_PATH",
            )
        listing = list_files(resolve_path(self.offline_root, normalized))
        if listing is None:
            raise NotFoundError(
                f"no Parquet spine at {parquet_path!r} in the offline store",
                reason="SPINE_NOT_FOUND", metadata={"parquet_path": parquet_path},
            )
        fs, path = listing.filesystem, listing.base
        files, schema = [], None
        for i in listing.files:
            try:
                with fs.open_input_file(i.path) as handle:
                    parquet = pq.ParquetFile(handle)
                    metadata, file_schema = parquet.metadata, _public(parquet.schema_arrow)
            except pa.ArrowInvalid as exc:
                raise InvalidArgumentError.for_field(
                    field, f"{i.path[len(path):] or parquet_path!r} is not a Parquet file: {exc}",
                    reason="INVALID_SPINE_FILE",
                ) from None
            if schema is None:
                schema = file_schema
            elif not file_schema.equals(schema):
                raise InvalidArgumentError.for_field(
                    field, f"the files under {parquet_path!r} have different schemas "
                    f"({i.path} differs from the first)", reason="SPINE_SCHEMA_MISMATCH",
                )
            files.append(SpineFile(i.path, _row_groups(metadata)))
        if schema is None:
            raise NotFoundError(
                f"no Parquet files under {parquet_path!r} in the offline store",
                reason="SPINE_NOT_FOUND", metadata={"parquet_path": parquet_path},
            )
        return ParquetSpine(f"spine {parquet_path!r}", schema, sum(f.rows for f in files), None,
                            listing.fingerprint, fs, tuple(files))

    def sweep(self, force: bool = False) -> int:
        """Delete expired spines (at most once a minute unless forced); returns how many."""
        now = self.clock()
        if not force and now - self._last_sweep < _SWEEP_EVERY_SECONDS:
            return 0
        self._last_sweep = now
        try:
            found = self.filesystem.get_file_info(pafs.FileSelector(self.directory, allow_not_found=True))
        except OSError:
            return 0
        deleted = 0
        for info in found:
            name = posixpath.basename(info.path)
            if not name.endswith(_SUFFIX):
                continue
            if name.startswith(_TEMP_PREFIX):
                # An upload that died half way; live ones are younger than a ttl.
                stale = info.mtime is not None and info.mtime.timestamp() + self.ttl_seconds < time.time()
            else:
                stale = _expires_at(self.filesystem, info.path) <= now
            if stale:
                deleted += _delete_quietly(self.filesystem, info.path)
        if deleted:
            log.info("expired spines deleted", count=deleted)
        return deleted

    def _path(self, spine_id: str) -> str:
        return posixpath.join(self.directory, f"{spine_id}{_SUFFIX}")


def _expires_at(fs: pafs.FileSystem, path: str) -> float:
    """When an uploaded spine expires (0 for a file that is not one)."""
    try:
        metadata = _open_ipc(fs, path).schema.metadata or {}
    except (OSError, pa.ArrowInvalid):
        return 0.0
    return int(metadata.get(EXPIRES_KEY, b"0")) / 1_000_000


def _row_groups(metadata: pq.FileMetaData) -> tuple[int, ...]:
    return tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))


def _public(schema: pa.Schema) -> pa.Schema:
    """The spine's schema without what Quiver added to it."""
    metadata = {k: v for k, v in (schema.metadata or {}).items()
                if k not in (EXPIRES_KEY, BATCH_ROWS_KEY)}
    return schema.with_metadata(metadata) if metadata else schema.remove_metadata()


def _fixed_size(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """`batches` re-cut into batches of exactly `size` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(pending)
            yield _one_batch(table.slice(0, size))
            pending = table.slice(size).to_batches()
            held -= size
    if held:
        yield _one_batch(pa.Table.from_batches(pending))


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


def _too_large(limit: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"the spine has more than {limit} rows, the server's limit (flight.max_spine_rows); "
        f"split it into several training sets",
        reason="SPINE_TOO_LARGE", metadata={"max_spine_rows": str(limit)},
    )


def _not_found(spine_id: str) -> NotFoundError:
    return NotFoundError(
        f"spine {spine_id!r} does not exist or has expired; upload it again with do_put",
        reason="SPINE_NOT_FOUND", metadata={"spine_id": spine_id},
    )


def _delete_quietly(fs: pafs.FileSystem, path: str) -> int:
    try:
        fs.delete_file(path)
        return 1
    except OSError:
        return 0
