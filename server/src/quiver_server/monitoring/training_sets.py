"""Profiles of training sets as they are streamed, stored under the training set's name.

A training set is identified by its fingerprint: a digest of everything its
rows depend on (spine, features, registry version, each view's history files,
timestamp column, column naming), the same for every partition. It is stored
under the name given in the TrainingSetCommand, or under the first 16 hex
digits of the fingerprint when it has none::

    _monitoring/profiles/<view>/training_set/<name>/<fingerprint>-p<index>.qprof

Every partition streamed to its end writes one file per view (a partition the
client abandons writes nothing); pulling the same partition again writes
nothing new. `quiver monitor --reference training_set:NAME` reads the newest
fingerprint stored under NAME and merges its partitions.

Profiling every number of a million-row partition would cost about as much as
the join itself (the quantile sketch alone takes ~100 ns a value), so moments
and sketches of numbers come from every k-th row, k chosen so that at most
`monitoring.training_set_sketch_rows` rows per partition are used. Row, value,
null and category counts are exact.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from quiver.flight.v1 import flight_pb2
from quiver_server.monitoring.profile import ViewProfile
from quiver_server.monitoring.storage import ProfileStore
from quiver_server.monitoring.summary import FeatureSummary
from quiver_server.registry.snapshot import Snapshot

__all__ = ["TrainingSetProfiler", "training_set_fingerprint"]

log = structlog.get_logger(__name__)


def training_set_fingerprint(partition: flight_pb2.TrainingSetPartition) -> str:
    """The digest shared by every partition of one training set."""
    digest = hashlib.sha256()
    digest.update(partition.spine.SerializeToString(deterministic=True))
    for part in (partition.spine_fingerprint, partition.timestamp_column, partition.project,
                 str(partition.registry_version), str(partition.full_feature_names),
                 *partition.feature_refs):
        digest.update(part.encode() + b"\0")
    for view, fingerprint in sorted(partition.history_fingerprints.items()):
        digest.update(f"{view}={fingerprint}\0".encode())
    return digest.hexdigest()[:32]


class TrainingSetProfiler:
    """Wraps a partition's batch iterator; profiles what passes through."""

    def __init__(self, store: ProfileStore, sketch_rows: int) -> None:
        self.store = store
        self.sketch_rows = sketch_rows

    def wrap(
        self,
        batches: Iterator[pa.RecordBatch],
        partition: flight_pb2.TrainingSetPartition,
        snapshot: Snapshot,
    ) -> Iterator[pa.RecordBatch]:
        fingerprint = training_set_fingerprint(partition)
        name = partition.name or fingerprint[:16]
        step = max(1, math.ceil(partition.row_count / self.sketch_rows))
        profiles: dict[str, ViewProfile] = {}
        columns: dict[str, dict[str, str]] = {}
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        for ref in partition.feature_refs:
            view_name, _, feature = ref.partition(":")
            view = snapshot.feature_view(view_name)
            if view_name not in profiles:
                profiles[view_name] = ViewProfile.for_view(
                    view, "training_set", epoch, epoch, features=[], producer="flight",
                    training_set=name, training_set_fingerprint=fingerprint,
                    registry_version=partition.registry_version,
                )
            profiles[view_name].features[feature] = FeatureSummary(
                feature, view.feature(feature).dtype
            )
            output = f"{view_name}__{feature}" if partition.full_feature_names else feature
            columns.setdefault(view_name, {})[feature] = output
        low: datetime | None = None
        high: datetime | None = None
        failed = False
        for batch in batches:
            if batch.num_rows and not failed:
                try:
                    for view_name, profile in profiles.items():
                        profile.observe(batch, columns[view_name], sample_step=step)
                    bounds = pc.min_max(batch.column(partition.timestamp_column)).as_py()
                    if bounds["min"] is not None:
                        low = bounds["min"] if low is None else min(low, bounds["min"])
                        high = bounds["max"] if high is None else max(high, bounds["max"])
                except Exception as exc:
                    # Best effort: the training set streams on without its profile.
                    log.warning("training-set profile abandoned", training_set=name,
                                error=f"{type(exc).__name__}: {exc}")
                    failed = True
            yield batch
        if failed:
            return
        # Only a partition streamed to its end is stored.
        for profile in profiles.values():
            profile.window_start = low or epoch
            profile.window_end = high or epoch
            try:
                self.store.write(
                    profile, name=f"{fingerprint}-p{partition.partition_index}.qprof"
                )
            except OSError as exc:
                log.warning("training-set profile not written", training_set=name,
                            feature_view=profile.feature_view, error=str(exc))
