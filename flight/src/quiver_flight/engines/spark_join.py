"""The point-in-time join as a Spark plan.

For each view in turn, the spine rows (keys, time bound) and the view's
history rows (keys, event time) are put in one DataFrame and ordered within
each key by time, history before spine at equal times (``e <= t`` is
inclusive), and history rows among themselves by the local engine's
tie-breaks: created time (null first, so it loses), then source file, then
row in file. The last history row at or before each spine row -- a running
``last(ignore nulls)`` -- is its point-in-time row; the ttl bound is checked
on it, never on an older one. This is a sort per view, not a join that
multiplies rows, so it scales with history plus spine.

Spine rows carry the features found so far from view to view; the result,
spine row number plus features, is written one directory per partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from quiver import FeatureView
from quiver_flight.engines.base import TrainingJob
from quiver_flight.engines.spark import key_column, lower_column, upper_column
from quiver_flight.engines.staged import (
    PARTITION_COLUMN,
    ROW_COLUMN,
    StagedJob,
    feature_column,
)
from quiver_flight.history import HistorySource
from quiver_flight.pit import group_by_view
from quiver_server.spark.frames import (
    SOURCE_FILE,
    SOURCE_ROW,
    SPARK_TYPES,
    all_valid,
    excluding,
    read_history,
    spark_path,
    time_units,
)
from quiver_server.spark.frames import (
    feature_column as history_feature,
)
from quiver_server.spark.frames import (
    key_column as history_key,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_TIME = "__t"
_KIND = "__kind"  # 0: history row, 1: spine row
_CREATED = "__c"
_VALUE = "__v"
_MATCH = "__m"
_EVENT = "e"


def run_join(
    session: SparkSession, staged: StagedJob, job: TrainingJob, views: Sequence[FeatureView],
    units: Sequence[str],
) -> None:
    """Join the staged spine with every view's history and write the partitions."""
    from pyspark.sql import functions as F

    frame = session.read.parquet(spark_path(staged.location, staged.spine))
    positions = {ref.ref: i for i, ref in enumerate(job.refs)}
    for index, (view, refs) in enumerate(group_by_view(job.refs)):
        assert view is views[index]
        columns = [feature_column(positions[r.ref]) for r in refs]
        source = job.sources[view.name]
        if not source.files:
            for column, ref in zip(columns, refs, strict=True):
                frame = frame.withColumn(column, F.lit(None).cast(SPARK_TYPES[ref.feature.dtype]))
            continue
        frame = _join_view(session, frame, source, index, [r.feature.name for r in refs], columns)
    result = frame.select(ROW_COLUMN, *(feature_column(i) for i in range(len(job.refs))))
    partition = F.expr(f"{ROW_COLUMN} div {job.partition_rows}")
    (
        result.withColumn(PARTITION_COLUMN, partition)
        .repartition(max(1, job.partitions), PARTITION_COLUMN)
        .sortWithinPartitions(PARTITION_COLUMN, ROW_COLUMN)
        .write.partitionBy(PARTITION_COLUMN)
        .parquet(spark_path(staged.location, staged.result))
    )


def _join_view(
    session: SparkSession, spine: DataFrame, source: HistorySource, index: int,
    features: list[str], columns: list[str],
) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    view = source.view
    schema = source.schema()
    assert schema is not None
    keys = [key_column(k.name) for k in view.join_keys]
    timestamp = view.source.timestamp_field
    created = view.source.created_timestamp_field
    history = read_history(
        session, source.location, source.files, source.base if source.is_directory else None
    )
    key_sources = [source.source_column(k.name) for k in view.join_keys]
    event = time_units(timestamp, schema.field(timestamp).type)
    values = [event.alias(_EVENT)] + [
        history_feature(source.source_column(name), schema.field(source.source_column(name)).type,
                        view.feature(name).dtype).alias(column)
        for name, column in zip(features, columns, strict=True)
    ]
    valid = all_valid([*key_sources, timestamp])
    if source.excluded:
        # Pending erasures: their entities' rows are not seen, as on the local engine.
        valid = valid & excluding(
            [history_key(s, k.dtype) for s, k in zip(key_sources, view.join_keys, strict=True)],
            source.excluded,
        )
    rows = history.where(valid).select(
        *(history_key(s, k.dtype).alias(c)
          for s, k, c in zip(key_sources, view.join_keys, keys, strict=True)),
        event.alias(_TIME),
        F.lit(0).alias(_KIND),
        (time_units(created, schema.field(created).type) if created else F.lit(None).cast("bigint"))
        .alias(_CREATED),
        SOURCE_FILE,
        SOURCE_ROW,
        F.struct(*values).alias(_VALUE),
    )
    probes = spine.withColumn(_TIME, F.col(upper_column(index))).withColumn(_KIND, F.lit(1))
    both = probes.unionByName(rows, allowMissingColumns=True)
    order = Window.partitionBy(*keys).orderBy(
        _TIME, _KIND, F.col(_CREATED).asc_nulls_first(), SOURCE_FILE, SOURCE_ROW
    ).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    matched = both.withColumn(_MATCH, F.last(_VALUE, ignorenulls=True).over(order)).where(
        F.col(_KIND) == 1
    )
    lower = F.col(lower_column(index))
    event_of_match = F.col(f"{_MATCH}.{_EVENT}")
    inside = event_of_match.isNotNull() & (lower.isNull() | (event_of_match >= lower))
    for column in columns:
        matched = matched.withColumn(column, F.when(inside, F.col(f"{_MATCH}.{column}")))
    return matched.drop(_TIME, _KIND, _CREATED, SOURCE_FILE, SOURCE_ROW, _VALUE, _MATCH)
