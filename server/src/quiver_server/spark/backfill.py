"""Computing a window of a view's history as a Spark job.

Inputs are read as temporary views named after them, restricted to their own
time window; the user's SQL runs inside the same wrapper the local engine
uses (`quiver_server.backfill.output.wrap_sql`), and a function runs on the
executors over Arrow batches (`mapInArrow`). Nanosecond input timestamps are
seen as microsecond timestamps, Spark's own precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from quiver import FeatureView
from quiver.errors import DefinitionError, FailedPreconditionError
from quiver_server.backfill.local import keep_window, load_function, run_function
from quiver_server.backfill.output import OutputColumn, conform, output_columns, wrap_sql
from quiver_server.governance.erased import ErasedEntities
from quiver_server.offline.source import list_files, resolve_path
from quiver_server.spark.frames import arrow_schema, spark_path
from quiver_server.times import micros

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_SPARK_DDL = {
    "int64": "BIGINT", "int32": "INT", "double": "DOUBLE", "float": "FLOAT", "bool": "BOOLEAN",
    "string": "STRING", "binary": "BINARY",
}


def compute_spark(
    session: SparkSession, offline_root: str, repo_path: str, view: FeatureView,
    start: datetime, end: datetime, target: str, erased: ErasedEntities,
) -> int:
    """Write the view's history rows of ``[start, end)`` as Parquet files in directory `target`,
    without the rows of the `erased` entities (filtered on the executors).

    Returns:
        The rows written.

    Raises:
        DefinitionError: the transformation fails or produces the wrong columns.
        FailedPreconditionError: an input is missing.
    """
    from pyspark.errors import PySparkException

    transformation = view.transformation
    assert transformation is not None
    columns = output_columns(view, transformation)
    raw_start = start - transformation.lookback
    try:
        inputs = {name: _input(session, offline_root, name, source.path, source.timestamp_field,
                               raw_start, end)
                  for name, source in transformation.inputs.items()}
        if transformation.sql is not None:
            for name, frame in inputs.items():
                frame.createOrReplaceTempView(name)
            result = session.sql(wrap_sql(transformation.sql, columns, start, end, dialect="spark"))
        else:
            assert transformation.function is not None
            [frame] = inputs.values()
            task = _FunctionTask(view, columns, transformation.function, repo_path, start, end)
            result = frame.mapInArrow(task, _ddl(columns))
        if erased:
            result = result.mapInArrow(erased, _ddl(columns))
        result.write.parquet(spark_path(target, target))
        return int(session.read.parquet(spark_path(target, target)).count())
    except PySparkException as exc:
        raise DefinitionError(
            f"feature view {view.name!r}: its transformation failed on Spark: "
            f"{str(exc).splitlines()[0]}"
        ) from None


def _input(
    session: SparkSession, offline_root: str, name: str, path: str, timestamp_field: str,
    start: datetime, end: datetime,
) -> DataFrame:
    from pyspark.sql import functions as F

    location = resolve_path(offline_root, path)
    listing = list_files(location)
    if listing is None or not listing.files:
        raise FailedPreconditionError(
            f"transformation input {name!r}: {location!r} does not exist", reason="SOURCE_NOT_FOUND"
        )
    schema = arrow_schema(listing)
    assert schema is not None
    reader = session.read.format("parquet")
    if listing.is_directory:
        reader = reader.option("basePath", spark_path(location, listing.base))
    frame = reader.load([spark_path(location, i.path) for i in listing.files])
    for field in schema:
        if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
            # Read as int64 nanoseconds (the session's setting); back to timestamps.
            frame = frame.withColumn(field.name, F.timestamp_micros(F.expr(f"`{field.name}` div 1000")))
    time = F.unix_micros(F.col(timestamp_field).cast("timestamp"))
    return frame.where((time >= micros(start)) & (time < micros(end)))


def _ddl(columns: list[OutputColumn]) -> str:
    parts = []
    for column in columns:
        arrow_type = column.dtype.arrow_type
        kind = "TIMESTAMP" if pa.types.is_timestamp(arrow_type) else _SPARK_DDL[str(arrow_type)]
        parts.append(f"`{column.name}` {kind}")
    return ", ".join(parts)


class _FunctionTask:
    """The user's function on an executor: imported there, output conformed and windowed."""

    def __init__(
        self, view: FeatureView, columns: list[OutputColumn], path: str, repo_path: str,
        start: datetime, end: datetime,
    ) -> None:
        self.view, self.columns, self.path, self.repo_path = view, columns, path, repo_path
        self.start, self.end = start, end

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        function = load_function(self.path, self.repo_path)
        time = self.view.transformation.timestamp_field if self.view.transformation else ""
        for batch in run_function(function, self.path, batches):
            table = keep_window(conform(self.view, self.columns, batch), time, self.start, self.end)
            yield from table.to_batches()
