"""Where profiles are built: batch jobs, long-running servers, served lookups.

- `ProfileWriter`: a batch job (materialization) profiles what it writes and
  stores one file per view and run.
- `ProfileAccumulator`: a server (push, serving) merges profiles in memory per
  view, source and window, and writes them every `flush_seconds` from a
  background thread, and once more when it stops. Every worker writes its own
  files (named by host and pid), which readers merge.
- `ServingSampler`: the online read path hands it each lookup's graded
  columns; it keeps a `serving_sample_rate` share of lookups (values of
  PRESENT features; every other status counts as a null) and feeds them to the
  accumulator in bulk at flush time, so a sampled lookup costs a few list appends.
  About `MAX_SAMPLED_VALUES` values at most are held between two flushes; past that,
  lookups go unsampled until the next flush, which bounds the memory and the time
  the flush spends (holding the GIL) turning them into sketches.
"""

from __future__ import annotations

import math
import os
import random
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from quiver import FeatureView, ValueType
from quiver_server.config import QuiverConfig
from quiver_server.monitoring.profile import ViewProfile
from quiver_server.monitoring.storage import ProfileStore

__all__ = [
    "ProfileAccumulator", "ProfileWriter", "ServerProfiles", "ServingSampler", "newest_event",
    "producer_id",
]

log = structlog.get_logger(__name__)

_PRESENT = 1  # quiver.serving.v1.FEATURE_STATUS_PRESENT
# Sampled values held per serving process between flushes: sketching a million takes
# ~0.1-0.2 s of the flush thread's time with the GIL held, during which lookups wait.
MAX_SAMPLED_VALUES = 500_000


def producer_id() -> str:
    """``<host>-<pid>``: distinct for every worker process of every replica."""
    return f"{socket.gethostname()}-{os.getpid()}"


def newest_event(column: pa.ChunkedArray | pa.Array | None) -> datetime | None:
    """The latest event time in a timestamp or int64-microseconds column."""
    if column is None or not len(column):
        return None
    top = pc.max(column).as_py()
    if top is None:
        return None
    if isinstance(top, datetime):
        return top if top.tzinfo else top.replace(tzinfo=UTC)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(top))


class ProfileWriter:
    """Profiles rows a batch job writes and stores them at once (one file per call).

    Args:
        store: Where files go.
        producer: Name in the files; default ``<host>-<pid>``.
        sketch_rows: At most about this many rows per call feed the moments
            and sketches of numbers (every k-th row; counts, nulls and
            categories stay exact). A uniform sample of 100k rows estimates
            quantiles to ~0.3%, below the KLL sketch's own error, at a
            fraction of the cost for large runs.
    """

    def __init__(
        self, store: ProfileStore, producer: str | None = None, sketch_rows: int = 100_000
    ) -> None:
        self.store = store
        self.producer = producer or producer_id()
        self.sketch_rows = sketch_rows

    def record(
        self,
        view: FeatureView,
        source: str,
        rows: pa.Table,
        window_start: datetime,
        window_end: datetime,
        event_column: str | None = None,
        registry_version: int = 0,
    ) -> str | None:
        """Profile `rows` (feature columns named as the features); returns the file written,
        or None when it could not be (logged; the caller's work goes on)."""
        try:
            profile = ViewProfile.for_view(
                view, source, window_start, window_end, producer=self.producer,
                registry_version=registry_version,
            )
            step = max(1, math.ceil(rows.num_rows / self.sketch_rows))
            profile.observe(rows, sample_step=step)
            if event_column is not None:
                profile.note_event_time(newest_event(rows.column(event_column)))
            return self.store.write(profile)
        except Exception as exc:
            # Monitoring is best effort: a profile that cannot be built or stored
            # never fails the job whose rows it describes.
            log.warning("profile not written", feature_view=view.name, source=source,
                        error=f"{type(exc).__name__}: {exc}")
            return None


class ProfileAccumulator:
    """Profiles merged in memory per (view, source, window), written periodically.

    Args:
        store: Where files go.
        window_seconds: Width of the wall-clock windows values are grouped in.
        flush_seconds: How often the background thread writes.
        clock: Now, for tests.
    """

    def __init__(
        self,
        store: ProfileStore,
        window_seconds: int,
        flush_seconds: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.window = timedelta(seconds=window_seconds)
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.producer = producer_id()
        self._profiles: dict[tuple[str, str, datetime], ViewProfile] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._before_flush: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="profile-flush", daemon=True)
            self._thread.start()

    def before_flush(self, callback: Callable[[], None]) -> None:
        """Run `callback` (e.g. a sampler draining its buffers) before each flush."""
        self._before_flush.append(callback)

    def add(self, view: FeatureView, source: str, columns: Mapping[str, pa.Array], rows: int,
            newest: datetime | None = None) -> None:
        """Profile `rows` rows (`columns`: feature -> values) into the current window of `view`."""
        start = _floor(self.clock(), self.window)
        key = (view.name, source, start)
        with self._lock:
            try:
                profile = self._profiles.get(key)
                if profile is None:
                    profile = self._profiles[key] = ViewProfile.for_view(
                        view, source, start, start + self.window, producer=self.producer,
                    )
                profile.observe_columns(columns, rows)
                profile.note_event_time(newest)
            except Exception as exc:
                # Best effort: a push or lookup never fails because of its profile.
                log.warning("profile not updated", feature_view=view.name, source=source,
                            error=f"{type(exc).__name__}: {exc}")

    def add_rows(self, view: FeatureView, source: str, rows: pa.Table, event_column: str) -> None:
        """Profile a table of rows (features named as in the view) into the current window."""
        try:
            newest = newest_event(rows[event_column])
        except Exception:  # an odd event column must not fail the push either
            newest = None
        self.add(view, source, {f: rows[f] for f in view.feature_names}, rows.num_rows, newest)

    def flush(self) -> list[str]:
        """Write every accumulated profile; returns the files written."""
        for callback in self._before_flush:
            callback()
        with self._lock:
            pending, self._profiles = self._profiles, {}
        written = []
        for profile in pending.values():
            if not profile.rows:
                continue
            try:
                written.append(self.store.write(profile))
            except OSError as exc:
                # A full or unreachable offline store loses this window's
                # profile, never a lookup or a push.
                log.warning("profile not written", feature_view=profile.feature_view,
                            source=profile.source, error=str(exc))
        return written

    def close(self) -> None:
        """Stop the background thread and write what is left."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while not self._stopped.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception as exc:  # the flusher must outlive one bad flush
                log.warning("profile flush failed", error=str(exc))


class _Column(Protocol):
    @property
    def values(self) -> list[Any]: ...
    @property
    def statuses(self) -> list[int]: ...


class _Table(Protocol):
    @property
    def view(self) -> FeatureView: ...


class _Part(Protocol):
    """A view's share of a read plan (`quiver_server.serving.online_read.ViewPart`)."""

    @property
    def table(self) -> _Table: ...
    @property
    def features(self) -> list[str]: ...
    @property
    def positions(self) -> list[int]: ...


@dataclass
class _Buffer:
    """Sampled values of one view's features since the last drain."""

    view: FeatureView
    rows: int = 0
    values: dict[str, list[Any]] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)


class ServingSampler:
    """Keeps a sample of served values and feeds them to a `ProfileAccumulator`.

    Args:
        accumulator: Where the sampled values go at each flush.
        rate: Share of lookups sampled (0 turns sampling off).
        random_source: A float in [0, 1) per call; tests make it deterministic.
        max_values: Values held until the next flush; lookups past it are not sampled.
    """

    def __init__(
        self,
        accumulator: ProfileAccumulator,
        rate: float,
        random_source: Callable[[], float] = random.random,
        max_values: int = MAX_SAMPLED_VALUES,
    ) -> None:
        self.accumulator = accumulator
        self.rate = rate
        self.max_values = max_values
        self._random = random_source
        self._buffers: dict[str, _Buffer] = {}
        self._held = 0  # values in _buffers
        self._lock = threading.Lock()
        accumulator.before_flush(self.drain)

    def observe(self, parts: Sequence[_Part], columns: Sequence[_Column]) -> None:
        """Called once per lookup with the read plan's parts and the graded columns."""
        if self._random() >= self.rate or self._held >= self.max_values:
            return
        try:
            self._keep(parts, columns)
        except Exception as exc:  # best effort: never fail the lookup
            log.warning("served values not sampled", error=f"{type(exc).__name__}: {exc}")

    def _keep(self, parts: Sequence[_Part], columns: Sequence[_Column]) -> None:
        with self._lock:
            for part in parts:
                view = part.table.view
                buffer = self._buffers.get(view.name)
                if buffer is None:
                    buffer = self._buffers[view.name] = _Buffer(view)
                if part.positions:
                    buffer.rows += len(columns[part.positions[0]].statuses)
                for feature, position in zip(part.features, part.positions, strict=True):
                    column = columns[position]
                    values = buffer.values.setdefault(feature, [])
                    statuses = column.statuses
                    self._held += len(statuses)
                    if statuses.count(_PRESENT) == len(statuses):
                        values.extend(column.values)
                        continue
                    nulls = 0
                    for value, status in zip(column.values, statuses, strict=True):
                        if status == _PRESENT:
                            values.append(value)
                        else:
                            nulls += 1
                    buffer.nulls[feature] = buffer.nulls.get(feature, 0) + nulls

    def drain(self) -> None:
        """Hand everything sampled so far to the accumulator."""
        with self._lock:
            buffers, self._buffers = self._buffers, {}
            self._held = 0
        for buffer in buffers.values():
            view = buffer.view
            arrays = {}
            try:
                for feature, values in buffer.values.items():
                    dtype = view.feature(feature).dtype
                    # Served timestamps are int64 microseconds, as the store keeps them.
                    arrow_type = pa.int64() if dtype == ValueType.TIMESTAMP else dtype.arrow_type
                    arrays[feature] = pa.array(
                        values + [None] * buffer.nulls.get(feature, 0), type=arrow_type
                    )
            except Exception as exc:  # e.g. a view redefined since the values were served
                log.warning("served values dropped", feature_view=view.name,
                            error=f"{type(exc).__name__}: {exc}")
                continue
            self.accumulator.add(view, "serving", arrays, buffer.rows)


def _floor(moment: datetime, width: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // width) * width


class ServerProfiles:
    """What a serving process profiles: pushed rows and sampled lookups, flushed together."""

    def __init__(self, accumulator: ProfileAccumulator, sampler: ServingSampler) -> None:
        self.accumulator = accumulator
        self.sampler = sampler

    @classmethod
    def from_config(cls, config: QuiverConfig) -> ServerProfiles | None:
        """Started profiles per `config.monitoring`, or None when monitoring is off."""
        settings = config.monitoring
        if not settings.enabled:
            return None
        accumulator = ProfileAccumulator(
            ProfileStore(config.offline_root), settings.window_seconds, settings.flush_seconds
        )
        sampler = ServingSampler(accumulator, settings.serving_sample_rate)
        accumulator.start()
        return cls(accumulator, sampler)

    def close(self) -> None:
        self.accumulator.close()
