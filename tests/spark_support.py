"""Helpers for tests of the Spark engine (they need the `spark` session fixture).

`BothEngines` runs the Spark engine's training-set path on a table next to the
local engine and checks that they agree cell for cell.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.engines import TrainingJob
from quiver_flight.engines.spark import SparkTrainingEngine
from quiver_flight.pit import PointInTimeEngine, group_by_view, output_schema
from quiver_flight.spines import Spine
from quiver_server.config import SparkConfig
from quiver_server.registry.snapshot import FeatureRef


@dataclass(frozen=True)
class TableSpine(Spine):
    """A spine held in memory (the engines read it only through `read`)."""

    table: pa.Table = field(default_factory=pa.table)

    @classmethod
    def of(cls, table: pa.Table) -> TableSpine:
        return cls("test spine", table.schema, table.num_rows, None, "test",
                   pafs.LocalFileSystem(), table)

    def read(self, offset: int, count: int) -> pa.Table:
        return self.table.slice(offset, count)

    def null_count(self, column: str) -> int:
        return int(self.table[column].null_count)


class BothEngines:
    """`join_table` that runs the local and the Spark engine and checks they agree cell for cell.

    Partitions are small (`partition_rows`), so rows cross partition and batch
    boundaries as they do on a real spine.
    """

    def __init__(self, root: str, *, partition_rows: int = 4, batch_rows: int = 3, **local: Any) -> None:
        self.local = PointInTimeEngine(root, batch_rows=batch_rows, **local)
        self.spark = SparkTrainingEngine(
            PointInTimeEngine(root, batch_rows=batch_rows), SparkConfig(master="local[2]")
        )
        self.partition_rows = partition_rows

    def join_table(self, spine: pa.Table, refs: Sequence[FeatureRef], **kw: Any) -> pa.Table:
        expected = self.local.join_table(spine, refs, **kw)
        got = self.spark_table(spine, refs, **kw)
        assert got.schema == expected.schema
        for name in expected.schema.names:
            assert got[name].to_pylist() == expected[name].to_pylist(), name
        assert got.equals(expected)
        return got

    def spark_table(
        self, spine: pa.Table, refs: Sequence[FeatureRef], *, timestamp_column: str = "event_timestamp",
        full_feature_names: bool = False,
    ) -> pa.Table:
        schema = output_schema(spine.schema, refs, timestamp_column=timestamp_column,
                               full_feature_names=full_feature_names)
        engine = self.spark
        sources = engine.locate([view for view, _ in group_by_view(refs)])
        engine.check_sources(refs, sources)
        per = self.partition_rows
        count = max(1, -(-spine.num_rows // per))
        job = TrainingJob(TableSpine.of(spine), refs, sources, schema, timestamp_column, per, count,
                          time.time() + 3600)
        staged = engine.stage(job)
        assert staged is not None
        batches: list[pa.RecordBatch] = []
        for index, path in enumerate(staged.paths):
            offset = index * per
            rows = spine.slice(offset, per)
            partition = pb.TrainingSetPartition(
                staged_path=path, row_offset=offset, row_count=rows.num_rows,
                partition_index=index, timestamp_column=timestamp_column,
                full_feature_names=full_feature_names,
            )
            batches.extend(engine.open(partition, rows, refs, sources, schema,
                                       full_feature_names=full_feature_names))
        return pa.Table.from_batches(batches, schema=schema)
