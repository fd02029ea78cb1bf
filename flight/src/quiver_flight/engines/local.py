"""The local engine: each partition is joined in the Flight server when its ticket is served."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa

from quiver import FeatureView
from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.engines.base import Staged, TrainingJob
from quiver_flight.engines.staged import read_staged
from quiver_flight.history import HistorySource
from quiver_flight.pit import PointInTimeEngine
from quiver_flight.spines import Spine
from quiver_server.registry.snapshot import FeatureRef


class LocalTrainingEngine:
    """`TrainingEngine` over the in-process point-in-time join.

    Tickets staged by another replica's Spark engine are served from their
    staged files, so a fleet may mix engines.

    Args:
        pit: The point-in-time join with its history cache.
    """

    def __init__(self, pit: PointInTimeEngine) -> None:
        self.pit = pit

    @property
    def offline_root(self) -> str:
        return self.pit.offline_root

    def locate(self, views: Sequence[FeatureView]) -> dict[str, HistorySource]:
        return self.pit.locate(views)

    def check_sources(self, refs: Sequence[FeatureRef], sources: Mapping[str, HistorySource]) -> None:
        self.pit.check_sources(refs, sources)

    def stage(self, job: TrainingJob) -> Staged | None:
        return None

    def open(
        self,
        partition: pb.TrainingSetPartition,
        rows: pa.Table,
        refs: Sequence[FeatureRef],
        sources: Mapping[str, HistorySource],
        schema: pa.Schema,
        *,
        full_feature_names: bool,
    ) -> Iterator[pa.RecordBatch]:
        if partition.staged_path:
            return read_staged(self.offline_root, partition, rows, refs, schema, self.pit.batch_rows)
        return self.pit.join(
            rows, refs, timestamp_column=partition.timestamp_column,
            full_feature_names=full_feature_names, sources=sources,
        )

    def join_spine(
        self,
        spine: Spine,
        refs: Sequence[FeatureRef],
        sources: Mapping[str, HistorySource],
        schema: pa.Schema,
        timestamp_column: str,
    ) -> Iterator[pa.RecordBatch]:
        return self.pit.join(
            spine.read(0, spine.num_rows), refs, timestamp_column=timestamp_column,
            full_feature_names=True, sources=sources,
        )
