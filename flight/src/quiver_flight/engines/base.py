"""The interface between the Flight service and an engine that computes training sets."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from quiver import FeatureView
from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.history import HistorySource
from quiver_flight.spines import Spine
from quiver_server.registry.snapshot import FeatureRef


@dataclass(frozen=True)
class TrainingJob:
    """A checked training set, cut into partitions of `partition_rows` spine rows.

    Attributes:
        spine: The whole spine.
        refs: Resolved features, in output order.
        sources: Each view's history as listed when planned.
        schema: The output schema.
        timestamp_column: The spine's event-time column.
        partition_rows: Spine rows per partition (the last may hold fewer).
        partitions: Number of partitions.
        expires_at: Seconds since the epoch after which tickets are stale.
        relocate: Lists the views' history again, to check it did not change
            while the job ran: a training dataset's pinned files; None: the
            engine's own `locate`.
    """

    spine: Spine
    refs: Sequence[FeatureRef]
    sources: Mapping[str, HistorySource]
    schema: pa.Schema
    timestamp_column: str
    partition_rows: int
    partitions: int
    expires_at: float
    relocate: Callable[[list[FeatureView]], Mapping[str, HistorySource]] | None = None


@dataclass(frozen=True)
class Staged:
    """Where a job's partitions were computed ahead.

    Attributes:
        paths: One directory per partition, relative to the offline store root.
        expires_at: Seconds since the epoch when they are deleted.
    """

    paths: list[str]
    expires_at: float


class TrainingEngine(Protocol):
    """What the Flight service needs from an engine."""

    @property
    def offline_root(self) -> str:
        """The offline store root (a path or URI) the engine reads."""
        ...

    def locate(self, views: Sequence[FeatureView]) -> dict[str, HistorySource]:
        """List the history files of `views` (their fingerprints pin tickets)."""
        ...

    def check_sources(self, refs: Sequence[FeatureRef], sources: Mapping[str, HistorySource]) -> None:
        """Raise FailedPreconditionError if a view's history lacks a column the refs need."""
        ...

    def stage(self, job: TrainingJob) -> Staged | None:
        """Compute the job's partitions ahead, or None to compute each when it is served.

        Raises:
            InvalidArgumentError: the spine's values do not fit (times out of range).
            FailedPreconditionError: the history changed or is malformed.
            UnavailableError: the engine cannot be reached.
        """
        ...

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
        """The joined rows of one partition (`rows` are its spine rows), in spine order.

        Args:
            partition: The ticket's partition.
            rows: Its spine rows.
            refs: The stored features joined, in column order.
            sources: Each view's history as listed when planned.
            schema: The join's schema (the spine's columns, then `refs`).
            full_feature_names: Name feature columns "view__feature".

        Raises:
            FailedPreconditionError: its staged rows are gone (reason STALE_TICKET).
        """
        ...

    def join_spine(
        self,
        spine: Spine,
        refs: Sequence[FeatureRef],
        sources: Mapping[str, HistorySource],
        schema: pa.Schema,
        timestamp_column: str,
    ) -> Iterator[pa.RecordBatch]:
        """The whole spine's join, in spine order, feature columns named "view__feature"
        (what fitting reads).

        Raises:
            InvalidArgumentError, FailedPreconditionError, UnavailableError: as `stage`.
        """
        ...
