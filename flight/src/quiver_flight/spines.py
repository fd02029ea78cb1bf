"""Spines: uploaded ones stored under the offline store, and Parquet ones named by path.

An uploaded spine is one Arrow IPC file, ``<offline root>/_spines/<id>.arrow``,
so every replica that shares the offline store can read it. Arrow IPC rather
than Parquet because a spine is written once and read back at once, by row
range: writing it is a copy (Parquet encoding cost more than the rest of an
upload), and reading a range touches only the record batches in it (memory
mapped on a local disk). Batches hold exactly `batch_rows` rows (recorded in
the file), so a row range maps to batches without reading any. The id is 128
random bits, so it is also the capability to read the spine.

Uploads are bounded in rows and bytes (``flight.max_spine_rows``,
``flight.max_spine_bytes``), and all stored spines together in bytes
(``flight.max_stored_spine_bytes``: the files stored when an upload starts,
plus the uploads running on this replica); an upload over a limit is refused
as it arrives, and leaves nothing on disk. The expiry is fixed when the upload
finishes (``flight.spine_ttl_seconds`` later) and written with the last batch;
expired spines are refused, and swept away by `SpineStore.sweep`, which the
server runs on a timer.

A spine may also be a Parquet file or directory in the spine directory
(`quiver_flight.parquet_spines`).
"""

from __future__ import annotations

import posixpath
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import structlog

from quiver.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from quiver_flight.parquet_spines import ParquetSpine, open_parquet_spine
from quiver_flight.spine_paths import SpineDirectory
from quiver_flight.spine_types import BATCH_ROWS_KEY, EXPIRES_KEY, Spine, public_schema
from quiver_server.config import FlightConfig
from quiver_server.offline.source import filesystem_and_path, resolve_path

log = structlog.get_logger(__name__)

SPINE_DIRECTORY = "_spines"
_SUFFIX = ".arrow"
_SPINE_ID = re.compile(r"^[0-9a-f]{32}$")
_TEMP_PREFIX = ".tmp-"

__all__ = ["SPINE_DIRECTORY", "ParquetSpine", "Spine", "SpineStore", "UploadedSpine"]


@dataclass(frozen=True)
class UploadedSpine(Spine):
    """A spine uploaded with do_put: one Arrow IPC file of fixed-size batches."""

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
        return ipc_null_count(self._reader(), self.schema.get_field_index(column))

    def _reader(self) -> pa.ipc.RecordBatchFileReader:
        return open_ipc(self.filesystem, self.path)


def ipc_null_count(reader: pa.ipc.RecordBatchFileReader, index: int) -> int:
    """Nulls in column `index` of an Arrow IPC file."""
    # Null counts live in the batches' metadata: no column data is read.
    return sum(reader.get_batch(i).column(index).null_count
               for i in range(reader.num_record_batches))


def open_ipc(fs: pafs.FileSystem, path: str) -> pa.ipc.RecordBatchFileReader:
    # A local file is memory mapped: batches are views of the page cache. The
    # map lives as long as any batch read from it.
    source = pa.memory_map(path) if isinstance(fs, pafs.LocalFileSystem) else fs.open_input_file(path)
    return ipc.open_file(source)


class SpineStore:
    """Uploaded spines under ``<offline root>/_spines``, and Parquet spines named by path.

    Args:
        offline_root: The offline store root (a path or URI).
        config: Limits, ttl and batch size (``flight.*``).
        directory: Where Parquet spines are named; default ``flight.spine_root``.
        clock: Seconds since the epoch (tests pass a fake one).
    """

    def __init__(
        self,
        offline_root: str,
        config: FlightConfig,
        *,
        directory: SpineDirectory | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.offline_root = offline_root
        self.config = config
        self.max_rows = config.max_spine_rows
        self.ttl_seconds = config.spine_ttl_seconds
        self.batch_rows = config.batch_rows
        self.clock = clock
        self.filesystem, self.directory = filesystem_and_path(
            resolve_path(offline_root, SPINE_DIRECTORY)
        )
        self.parquet = directory or SpineDirectory(offline_root, config.spine_root)
        self._uploading: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> UploadedSpine:
        """Store an uploaded spine.

        Raises:
            ResourceExhaustedError: over a row or byte limit (nothing is kept).
            InvalidArgumentError: a spine without columns.
        """
        if len(schema) == 0:
            raise InvalidArgumentError.for_field(
                "spine", "the spine has no columns", reason="SPINE_EMPTY_SCHEMA"
            )
        self.filesystem.create_dir(self.directory, recursive=True)
        spine_id = secrets.token_hex(16)
        stored = schema.with_metadata({
            **(schema.metadata or {}), BATCH_ROWS_KEY: str(self.batch_rows).encode(),
        })
        temp = posixpath.join(self.directory, f"{_TEMP_PREFIX}{spine_id}{_SUFFIX}")
        stored_bytes = self.stored_bytes()
        rows = 0
        try:
            with self.filesystem.open_output_stream(temp) as sink, ipc.new_file(sink, stored) as writer:
                incoming = self._limited(spine_id, batches, stored_bytes)
                pending = None
                for batch in _fixed_size(incoming, self.batch_rows):
                    if pending is not None:
                        writer.write_batch(pending)
                    pending = batch
                    rows += batch.num_rows
                # The expiry counts from the end of the upload, however long it took.
                expires_at = self.clock() + self.ttl_seconds
                last = pending if pending is not None else _empty_batch(stored)
                writer.write_batch(last, custom_metadata={
                    EXPIRES_KEY: str(int(expires_at * 1_000_000)).encode(),
                })
            self.filesystem.move(temp, self._path(spine_id))
        except BaseException:
            _delete_quietly(self.filesystem, temp)
            raise
        finally:
            with self._lock:
                self._uploading.pop(spine_id, None)
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
                "spine.spine_id", f"{spine_id[:40]!r} is not a spine id (32 hex digits from do_put)",
                reason="INVALID_SPINE_ID",
            )
        path = self._path(spine_id)
        try:
            reader = open_ipc(self.filesystem, path)
        except FileNotFoundError:
            raise _not_found(spine_id) from None
        expires_at = _expires_at(reader)
        if self.clock() >= expires_at:
            _delete_quietly(self.filesystem, path)
            raise NotFoundError(
                f"spine {spine_id!r} expired (spines are kept {self.ttl_seconds} s); upload it again",
                reason="SPINE_EXPIRED", metadata={"spine_id": spine_id},
            )
        metadata = reader.schema.metadata or {}
        batch_rows = int(metadata.get(BATCH_ROWS_KEY, b"1"))
        batches = reader.num_record_batches
        rows = 0 if batches == 0 else (batches - 1) * batch_rows + reader.get_batch(batches - 1).num_rows
        return UploadedSpine(f"spine {spine_id!r}", public_schema(reader.schema), rows,
                             expires_at or None, spine_id, self.filesystem, path, batch_rows)

    def open_path(self, parquet_path: str, history: Iterable[str] = ()) -> ParquetSpine:
        """A Parquet file or directory in the spine directory, as a spine.

        Tickets planned over it expire `ttl_seconds` from now, like uploaded spines.

        Raises:
            InvalidArgumentError: a path that is malformed or leads out of the
                directory or into feature history, or files that are not
                Parquet or do not share one schema.
            NotFoundError: nothing at the path.
        """
        return open_parquet_spine(self.parquet, parquet_path, list(history),
                                  self.clock() + self.ttl_seconds)

    def sweep(self) -> int:
        """Delete expired spines, and uploads that died half way; returns how many."""
        now = self.clock()
        try:
            found = self.filesystem.get_file_info(pafs.FileSelector(self.directory, allow_not_found=True))
        except OSError as exc:
            log.warning("spine sweep failed", error=str(exc))
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
                stale = _stored_expiry(self.filesystem, info.path) <= now
            if stale:
                deleted += _delete_quietly(self.filesystem, info.path)
        if deleted:
            log.info("expired spines deleted", count=deleted)
        return deleted

    def stored_bytes(self) -> int:
        """Bytes of the uploaded spines stored now (finished uploads only)."""
        try:
            found = self.filesystem.get_file_info(pafs.FileSelector(self.directory, allow_not_found=True))
        except OSError:
            return 0
        return sum(i.size or 0 for i in found if i.path.endswith(_SUFFIX)
                   and not posixpath.basename(i.path).startswith(_TEMP_PREFIX))

    def _limited(
        self, spine_id: str, batches: Iterable[pa.RecordBatch], stored_bytes: int
    ) -> Iterator[pa.RecordBatch]:
        """`batches`, refused as soon as they pass a row or byte limit."""
        config = self.config
        rows = size = 0
        swept = False
        for batch in batches:
            rows += batch.num_rows
            size += batch.nbytes
            if rows > config.max_spine_rows:
                raise _too_large(f"more than {config.max_spine_rows} rows", "max_spine_rows",
                                 config.max_spine_rows)
            if size > config.max_spine_bytes:
                raise _too_large(f"more than {config.max_spine_bytes} bytes", "max_spine_bytes",
                                 config.max_spine_bytes)
            with self._lock:
                self._uploading[spine_id] = size
                total = stored_bytes + sum(self._uploading.values())
            if total > config.max_stored_spine_bytes and not swept:
                # Expired spines may still hold the room: sweep them once, count again.
                swept = True
                if self.sweep():
                    stored_bytes = self.stored_bytes()
                    with self._lock:
                        total = stored_bytes + sum(self._uploading.values())
            if total > config.max_stored_spine_bytes:
                raise ResourceExhaustedError(
                    f"the stored spines would take more than {config.max_stored_spine_bytes} bytes, "
                    f"the server's limit (flight.max_stored_spine_bytes); retry once older spines "
                    f"expire, or use a Parquet spine (parquet_path)",
                    reason="SPINE_STORE_FULL",
                    metadata={"max_stored_spine_bytes": str(config.max_stored_spine_bytes)},
                )
            yield batch

    def _path(self, spine_id: str) -> str:
        return posixpath.join(self.directory, f"{spine_id}{_SUFFIX}")


def _expires_at(reader: pa.ipc.RecordBatchFileReader) -> float:
    """When an uploaded spine expires: written with its last batch (0: unknown)."""
    count = reader.num_record_batches
    if count:
        _, metadata = reader.get_batch_with_custom_metadata(count - 1)
        if metadata is not None and EXPIRES_KEY in metadata:
            return int(metadata[EXPIRES_KEY]) / 1_000_000
    # Spines stored before the expiry moved to the last batch kept it in the schema.
    return int((reader.schema.metadata or {}).get(EXPIRES_KEY, b"0")) / 1_000_000


def _stored_expiry(fs: pafs.FileSystem, path: str) -> float:
    """When an uploaded spine expires (0 for a file that is not one)."""
    try:
        return _expires_at(open_ipc(fs, path))
    except (OSError, pa.ArrowInvalid, ValueError):
        return 0.0


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


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


def _too_large(what: str, setting: str, limit: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"the spine has {what}, the server's limit (flight.{setting}); "
        f"split it into several training sets",
        reason="SPINE_TOO_LARGE", metadata={setting: str(limit)},
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
