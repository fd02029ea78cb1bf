"""Parquet spines: a file or directory in the spine directory, read by row group.

Opening one lists its files (checked by `SpineDirectory`), reads each footer
for the schema and the rows per row group, and keeps that, so a row range of
the spine maps to row groups without reading any data.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from quiver.errors import InvalidArgumentError, NotFoundError
from quiver_flight.spine_paths import FIELD, SpineDirectory
from quiver_flight.spine_types import Spine, public_schema
from quiver_server.echo import clip


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
    """A Parquet file or directory in the spine directory, read by row group."""

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


def open_parquet_spine(
    directory: SpineDirectory, parquet_path: str, history: list[str], expires_at: float
) -> ParquetSpine:
    """The Parquet spine `parquet_path` names in `directory`.

    Args:
        directory: The spine directory.
        parquet_path: The path as the client sent it.
        history: Locations of feature history, which no spine file may lie in.
        expires_at: When tickets planned over it now expire.

    Raises:
        InvalidArgumentError: a bad path, a file that is not Parquet, or files
            with different schemas.
        NotFoundError: nothing at the path.
    """
    listing = directory.listing(parquet_path, history)
    shown = clip(parquet_path)
    files, schema = [], None
    for info in listing.files:
        name = clip(directory.relative(info.path))
        where = repr(shown) if listing.files == (info,) and not listing.is_directory else (
            f"{name!r} (in {shown!r})")
        try:
            with listing.filesystem.open_input_file(info.path) as handle:
                parquet = pq.ParquetFile(handle)
                metadata, file_schema = parquet.metadata, public_schema(parquet.schema_arrow)
        except pa.ArrowInvalid:
            raise InvalidArgumentError.for_field(
                FIELD, f"{where} is not a Parquet file",
                reason="INVALID_SPINE_FILE",
            ) from None
        if schema is None:
            schema = file_schema
        elif not file_schema.equals(schema):
            raise InvalidArgumentError.for_field(
                FIELD, f"the files under {shown!r} have different schemas ({name!r} differs "
                f"from the first)", reason="SPINE_SCHEMA_MISMATCH",
            )
        files.append(SpineFile(info.path, _row_groups(metadata)))
    if schema is None:
        raise NotFoundError(
            f"no Parquet files under {shown!r} in the spine directory",
            reason="SPINE_NOT_FOUND", metadata={"parquet_path": shown},
        )
    return ParquetSpine(f"spine {shown!r}", schema, sum(f.rows for f in files), expires_at,
                        listing.fingerprint, listing.filesystem, tuple(files))


def _row_groups(metadata: pq.FileMetaData) -> tuple[int, ...]:
    return tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
