"""Parquet history as Spark DataFrames, with the columns the local engine compares.

Both engines must pick the same rows, so the values they compare are made the
same here:

- source order: every history row carries its file's rank among the files
  sorted by path (``SOURCE_FILE``) and its row index in that file
  (``SOURCE_ROW``), so "last in the source" means what it means locally;
- timestamps: int64 counts of the local engine's comparison unit
  (microseconds, or nanoseconds for a nanosecond column, read as int64 thanks
  to the session's settings), with naive values read as UTC;
- join keys: int64, string or binary, as `quiver_flight.keys.normalize_key`
  makes them; features: the Spark type of their declared ValueType.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as ds

from quiver import ValueType
from quiver.errors import FailedPreconditionError
from quiver_server.offline.source import Listing

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

SOURCE_FILE = "__quiver_file"
SOURCE_ROW = "__quiver_row_in_file"
_FILE_KEY = "__quiver_file_key"
# A URI's scheme and the slashes after it, which differ between the forms
# Spark reports one file in ("file:/x", "file:///x").
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/*")
_SPARK_SCHEMES = {"s3": "s3a", "gs": "gs", "hdfs": "hdfs", "abfs": "abfs", "file": "file"}

SPARK_TYPES = {
    ValueType.INT64: "bigint",
    ValueType.INT32: "int",
    ValueType.FLOAT64: "double",
    ValueType.FLOAT32: "float",
    ValueType.BOOL: "boolean",
    ValueType.STRING: "string",
    ValueType.BYTES: "binary",
    ValueType.TIMESTAMP: "timestamp",
}
_KEY_TYPES = {
    ValueType.INT64: "bigint", ValueType.INT32: "bigint",
    ValueType.STRING: "string", ValueType.BYTES: "binary",
}


def spark_path(location: str, path: str) -> str:
    """The path Spark opens for `path`, a file of the pyarrow filesystem behind `location`."""
    if "://" not in location:
        return path
    scheme = location.split("://", 1)[0]
    if scheme == "file":
        return f"file://{path}"
    return f"{_SPARK_SCHEMES.get(scheme, scheme)}://{path}"


def arrow_schema(listing: Listing) -> pa.Schema | None:
    """The schema pyarrow's dataset discovery gives the files (as the local engine reads them)."""
    if not listing.files:
        return None
    dataset = ds.dataset(
        [i.path for i in listing.files], filesystem=listing.filesystem, format="parquet",
        partitioning="hive", partition_base_dir=listing.base if listing.is_directory else None,
    )
    return dataset.schema


def read_history(
    session: SparkSession, location: str, files: Sequence[str], base: str | None
) -> DataFrame:
    """History files as one DataFrame, each row tagged with its place in the source.

    Args:
        session: The Spark session.
        location: The source location (a path or URI) the files were listed from.
        files: The files' paths in their pyarrow filesystem, sorted.
        base: The directory hive partitions are read below, or None for one file.

    Raises:
        FailedPreconditionError: no files, or Spark reports files that were
            not listed (the history changed while it was read).
    """
    from pyspark.sql import functions as F

    if not files:
        raise FailedPreconditionError(f"{location!r} holds no history files", reason="SOURCE_EMPTY")
    reader = session.read.format("parquet")
    if base is not None:
        reader = reader.option("basePath", spark_path(location, base))
    frame = reader.load([spark_path(location, path) for path in files])
    rank = {_strip(path): n for n, path in enumerate(files)}
    keys: list[tuple[str, int]] = []
    for uri in frame.inputFiles():
        found = rank.get(unquote(_strip(uri)))
        if found is None:
            raise FailedPreconditionError(
                f"{location!r} changed while it was read ({uri} was not listed); retry",
                reason="HISTORY_CHANGED",
            )
        keys.append((_strip(uri), found))
    ranks = session.createDataFrame(keys, f"{_FILE_KEY} string, {SOURCE_FILE} int")
    tagged = frame.select(
        "*",
        F.regexp_replace(F.col("_metadata.file_path"), _SCHEME.pattern, "").alias(_FILE_KEY),
        F.col("_metadata.row_index").alias(SOURCE_ROW),
    )
    return tagged.join(F.broadcast(ranks), _FILE_KEY).drop(_FILE_KEY)


def read_listing(session: SparkSession, location: str, listing: Listing) -> DataFrame:
    """`read_history` over a fresh listing."""
    return read_history(
        session, location, [i.path for i in listing.files],
        listing.base if listing.is_directory else None,
    )


def _strip(path: str) -> str:
    return _SCHEME.sub("", path).lstrip("/")


def time_units(name: str, arrow_type: pa.DataType) -> Column:
    """A history timestamp column as int64 in its comparison unit (ns for ns columns, else us)."""
    from pyspark.sql import functions as F

    column = F.col(name)
    if arrow_type.unit == "ns":
        return column  # read as int64 nanoseconds
    return F.unix_micros(column.cast("timestamp"))


def micros(name: str, arrow_type: pa.DataType) -> Column:
    """A history timestamp column as int64 microseconds, finer units truncated as Arrow does."""
    from pyspark.sql import functions as F

    if arrow_type.unit == "ns":
        return F.expr(f"`{name}` div 1000")
    return F.unix_micros(F.col(name).cast("timestamp"))


def feature_column(name: str, arrow_type: pa.DataType, dtype: ValueType) -> Column:
    """A history column as the Spark type of `dtype` (timestamps: UTC instants, truncated to us)."""
    from pyspark.sql import functions as F

    if dtype == ValueType.TIMESTAMP:
        return F.timestamp_micros(micros(name, arrow_type))
    return F.col(name).cast(SPARK_TYPES[dtype])


def key_column(name: str, dtype: ValueType) -> Column:
    """A join key column in its canonical type (both integer widths share int64)."""
    from pyspark.sql import functions as F

    return F.col(name).cast(_KEY_TYPES[dtype])


def excluding(keys: Sequence[Column], excluded: Sequence[Sequence[object]]) -> Column:
    """True for rows whose key columns (canonical types, join key order) equal none of
    the `excluded` keys: entities of erasures still in progress."""
    from pyspark.sql import functions as F

    hit = F.lit(False)
    for key in excluded:
        if not all(_storable(value) for value in key):
            continue  # a value no key column can hold matches no row (as locally)
        match = F.lit(True)
        for column, value in zip(keys, key, strict=True):
            match = match & (column == F.lit(value))
        hit = hit | match
    return ~hit


def _storable(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return isinstance(value, str | bytes | int)


def all_valid(names: Sequence[str]) -> Column:
    """True where none of `names` is null."""
    from pyspark.sql import functions as F

    condition = F.lit(True)
    for name in names:
        condition = condition & F.col(name).isNotNull()
    return condition
