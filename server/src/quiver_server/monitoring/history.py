"""Profiles of a view's offline history, computed on demand by `quiver monitor --current history`.

The history of the last ``current + reference`` seconds is scanned once
(only the features and the event time are read, the time range pushed down to
Parquet). Rows are grouped into buckets of the current window's length, counted
back from `now`: bucket 0 is the current window, the rest the trailing
reference, one profile per bucket (which gives the trend). Moments and
sketches of numbers see every k-th row so that about `SKETCH_ROWS` rows are
used whatever the size of the history; counts, nulls and categories are exact. Nothing is stored: history
profiles are recomputed from the history itself, the source of truth.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from quiver import FeatureView
from quiver_server.monitoring.profile import ViewProfile
from quiver_server.offline.source import view_dataset

__all__ = ["profile_history"]

SKETCH_ROWS = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _by_bucket(
    batch: pa.RecordBatch, index: np.ndarray
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The rows of each bucket, as zero-copy slices when the batch is in time order
    (history usually is), else after one reordering take."""
    steps = np.diff(index)
    if not ((steps <= 0).all() or (steps >= 0).all()):
        order = np.argsort(index, kind="stable")
        batch, index = batch.take(pa.array(order)), index[order]
        steps = np.diff(index)
    cuts = [0, *(np.flatnonzero(steps) + 1).tolist(), len(index)]
    for start, stop in itertools.pairwise(cuts):
        yield int(index[start]), batch.slice(start, stop - start)


def profile_history(
    offline_root: str,
    view: FeatureView,
    now: datetime,
    bucket: timedelta,
    buckets: int,
) -> list[ViewProfile]:
    """One profile per bucket, newest first: ``[now - (i+1) * bucket, now - i * bucket)``.

    Raises:
        FailedPreconditionError: the view's history does not exist.
    """
    start = now - bucket * buckets
    profiles = [
        ViewProfile.for_view(view, "history", now - bucket * (i + 1), now - bucket * i,
                             producer="history")
        for i in range(buckets)
    ]
    dataset = view_dataset(offline_root, view)
    source_of = {name: column for column, name in view.source.field_mapping.items()}
    timestamp = view.source.timestamp_field
    event = ds.field(timestamp)
    event_type = dataset.schema.field(timestamp).type
    # Bounds in the column's own type (Parquet statistics prune); a coarser unit
    # rounds them down, a sub-second difference at the edges of the range.
    condition = (event >= pa.scalar(start).cast(event_type, safe=False)) & (
        event < pa.scalar(now).cast(event_type, safe=False)
    )
    columns = {f: ds.field(source_of.get(f, f)) for f in view.feature_names}
    columns["__event_us"] = event.cast(pa.timestamp("us", tz=event_type.tz)).cast(pa.int64())
    total = dataset.count_rows(filter=condition)
    step = max(1, math.ceil(total / SKETCH_ROWS))
    now_us = (now - _EPOCH) // timedelta(microseconds=1)
    width_us = bucket // timedelta(microseconds=1)
    # Large batches: fewer calls per feature; the scan reads ahead on its own threads.
    for batch in dataset.to_batches(columns=columns, filter=condition, batch_size=1 << 20):
        if not batch.num_rows:
            continue
        events = batch.column("__event_us").to_numpy(zero_copy_only=False)
        index = (now_us - 1 - events) // width_us
        for i, part in _by_bucket(batch, index):
            if not 0 <= i < buckets:
                continue
            profiles[i].observe(part, sample_step=step)
            newest = pc.max(part.column("__event_us")).as_py()
            if newest is not None:
                profiles[i].note_event_time(_EPOCH + timedelta(microseconds=newest))
    return profiles
