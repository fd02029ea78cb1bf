"""Computing a window of a view's history on the local engine: DuckDB, or the function in-process."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from quiver import BatchTransformation, FeatureView, ParquetSource
from quiver.errors import DefinitionError, FailedPreconditionError
from quiver_server.backfill.output import (
    OutputColumn,
    conform,
    output_columns,
    output_schema,
    wrap_sql,
)
from quiver_server.governance.erased import ErasedEntities
from quiver_server.offline.source import filesystem_and_path, list_files, resolve_path
from quiver_server.times import micros

# Rows per Parquet row group of computed history.
ROW_GROUP_ROWS = 1 << 20

BatchFunction = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


def raw_dataset(offline_root: str, name: str, source: ParquetSource) -> ds.Dataset:
    """A transformation input's Parquet files.

    Raises:
        FailedPreconditionError: the input does not exist.
    """
    location = resolve_path(offline_root, source.path)
    listing = list_files(location)
    if listing is None:
        raise FailedPreconditionError(
            f"transformation input {name!r}: {location!r} does not exist", reason="SOURCE_NOT_FOUND"
        )
    return ds.dataset(
        [i.path for i in listing.files], filesystem=listing.filesystem, format="parquet",
        partitioning="hive", partition_base_dir=listing.base if listing.is_directory else None,
    )


def raw_filter(dataset: ds.Dataset, source: ParquetSource, start: datetime, end: datetime) -> ds.Expression:
    """Rows of an input whose own time lies in ``[start, end)`` (naive times are UTC)."""
    field = dataset.schema.field(source.timestamp_field)
    column = ds.field(source.timestamp_field).cast(pa.timestamp("us", tz=field.type.tz))
    low = pa.scalar(micros(start), pa.int64()).cast(pa.timestamp("us", tz=field.type.tz))
    high = pa.scalar(micros(end), pa.int64()).cast(pa.timestamp("us", tz=field.type.tz))
    return (column >= low) & (column < high)


def load_function(path: str, repo_path: str) -> BatchFunction:
    """The function an import path names, from the feature repo or an installed package.

    Raises:
        DefinitionError: it cannot be imported or is not callable.
    """
    module_name, _, attribute = path.partition(":")
    if repo_path not in sys.path:
        sys.path.insert(0, repo_path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise DefinitionError(
            f"transformation function {path!r}: cannot import {module_name!r} "
            f"({type(exc).__name__}: {exc})"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise DefinitionError(f"transformation function {path!r}: {module_name} has no function {attribute!r}")
    return function  # type: ignore[no-any-return]


def function_code(view: FeatureView, repo_path: str) -> bytes:
    """The source file of the module holding a function transformation (empty for SQL, or
    when the module has no source file, such as a compiled one).

    Raises:
        DefinitionError: the function cannot be imported.
    """
    transformation = view.transformation
    if transformation is None or transformation.function is None:
        return b""
    module = inspect.getmodule(load_function(transformation.function, repo_path))
    try:
        source = inspect.getsourcefile(module) if module is not None else None
        return Path(source).read_bytes() if source else b""
    except (OSError, TypeError):
        return b""


def compute_local(
    offline_root: str, repo_path: str, view: FeatureView, start: datetime, end: datetime,
    target: str, erased: ErasedEntities,
) -> int:
    """Write the view's history rows of ``[start, end)`` as one Parquet file at `target`,
    without the rows of the `erased` entities.

    Returns:
        The rows written.

    Raises:
        DefinitionError: the transformation fails or produces the wrong columns.
        FailedPreconditionError: an input is missing.
    """
    transformation = view.transformation
    assert transformation is not None
    columns = output_columns(view, transformation)
    raw_start = start - transformation.lookback
    if transformation.sql is not None:
        batches = _run_sql(offline_root, view, transformation, columns, raw_start, start, end)
    else:
        batches = _run_function(offline_root, repo_path, view, transformation, columns, raw_start, start, end)
    fs, path = filesystem_and_path(target)
    rows = 0
    with fs.open_output_stream(path) as sink, pq.ParquetWriter(sink, output_schema(columns)) as writer:
        for computed in batches:
            table = erased.keep(computed)
            rows += table.num_rows
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    return rows


def _run_sql(
    offline_root: str, view: FeatureView, transformation: BatchTransformation,
    columns: list[OutputColumn], raw_start: datetime, start: datetime, end: datetime,
) -> Iterator[pa.Table]:
    assert transformation.sql is not None
    connection = duckdb.connect()
    try:
        connection.execute("SET TimeZone = 'UTC'")
        for name, source in transformation.inputs.items():
            dataset = raw_dataset(offline_root, name, source)
            connection.register(f"quiver_raw_{name}", dataset)
            aware = dataset.schema.field(source.timestamp_field).type.tz is not None
            kind = "TIMESTAMPTZ" if aware else "TIMESTAMP"
            low, high = (
                f"'{(t if aware else t.replace(tzinfo=None)).isoformat()}'::{kind}" for t in (raw_start, end)
            )
            # The inputs' own time window; DuckDB pushes it into the Parquet scan.
            connection.execute(
                f'CREATE TEMP VIEW "{name}" AS SELECT * FROM "quiver_raw_{name}" '
                f'WHERE "{source.timestamp_field}" >= {low} AND "{source.timestamp_field}" < {high}'
            )
        query = wrap_sql(transformation.sql, columns, start, end, dialect="duckdb")
        try:
            for batch in connection.sql(query).to_arrow_reader(ROW_GROUP_ROWS):
                yield conform(view, columns, batch)
        except duckdb.Error as exc:
            raise DefinitionError(
                f"feature view {view.name!r}: its transformation's SQL failed: {exc}"
            ) from None
    finally:
        connection.close()


def _run_function(
    offline_root: str, repo_path: str, view: FeatureView, transformation: BatchTransformation,
    columns: list[OutputColumn], raw_start: datetime, start: datetime, end: datetime,
) -> Iterator[pa.Table]:
    assert transformation.function is not None
    function = load_function(transformation.function, repo_path)
    [(name, source)] = transformation.inputs.items()
    dataset = raw_dataset(offline_root, name, source)
    batches = dataset.to_batches(filter=raw_filter(dataset, source, raw_start, end))
    for batch in run_function(function, transformation.function, batches):
        table = conform(view, columns, batch)
        yield keep_window(table, transformation.timestamp_field, start, end)


def run_function(
    function: BatchFunction, path: str, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Call a user's function, turning its failure into a DefinitionError naming it."""
    try:
        for batch in function(batches):
            if isinstance(batch, pa.Table):
                yield from batch.to_batches()
            elif isinstance(batch, pa.RecordBatch):
                yield batch
            else:
                raise TypeError(f"it yielded {type(batch).__name__}, not a pyarrow.RecordBatch")
    except DefinitionError:
        raise
    except Exception as exc:
        raise DefinitionError(
            f"transformation function {path!r} failed: {type(exc).__name__}: {exc}"
        ) from None


def keep_window(table: pa.Table, column: str, start: datetime, end: datetime) -> pa.Table:
    """The rows of `table` whose `column` (timestamp[us, UTC]) lies in ``[start, end)``."""
    times = table[column].cast(pa.int64())
    keep = pc.and_(pc.greater_equal(times, micros(start)), pc.less(times, micros(end)))
    return table.filter(keep)

