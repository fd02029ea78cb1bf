"""`ViewProfile`: the summaries of a feature view's features from one source and window."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa

from quiver import FeatureView, ValueType
from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.monitoring.summary import FeatureSummary

__all__ = ["SOURCES", "ViewProfile", "merge_profiles"]

# Where profiled values come from.
SOURCES = ("materialize", "push", "serving", "training_set", "history")


@dataclass
class ViewProfile:
    """Summaries of one view's features, with where and when they were observed.

    Attributes:
        feature_view: The view.
        source: One of `SOURCES`.
        window_start, window_end: The time range the values belong to (see
            `quiver.monitoring.v1.Profile`).
        features: Summary per feature name.
        rows: Rows profiled.
        newest_event: Newest event time among the rows, when known.
        producer: Who built it.
        training_set, training_set_fingerprint: For source training_set.
        registry_version: Registry version the definitions came from.
        created_at: When it was built.
    """

    feature_view: str
    source: str
    window_start: datetime
    window_end: datetime
    features: dict[str, FeatureSummary] = field(default_factory=dict)
    rows: int = 0
    newest_event: datetime | None = None
    producer: str = ""
    training_set: str = ""
    training_set_fingerprint: str = ""
    registry_version: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def for_view(
        cls, view: FeatureView, source: str, window_start: datetime, window_end: datetime,
        features: Iterable[str] | None = None, *, producer: str = "",
        training_set: str = "", training_set_fingerprint: str = "", registry_version: int = 0,
    ) -> ViewProfile:
        """An empty profile of `view`'s features (or the named ones)."""
        names = list(features) if features is not None else view.feature_names
        summaries = {name: FeatureSummary(name, view.feature(name).dtype) for name in names}
        return cls(
            view.name, source, window_start, window_end, summaries, producer=producer,
            training_set=training_set, training_set_fingerprint=training_set_fingerprint,
            registry_version=registry_version,
        )

    def observe(self, table: pa.Table | pa.RecordBatch, columns: Mapping[str, str] | None = None,
                sample_step: int = 1) -> None:
        """Add rows: each profiled feature's column (renamed by `columns`, feature -> column)."""
        self.rows += table.num_rows
        for name, summary in self.features.items():
            column = columns.get(name, name) if columns else name
            summary.update(table.column(column), sample_step)

    def observe_columns(self, columns: Mapping[str, pa.Array], rows: int) -> None:
        """Add `rows` rows of which only some features were seen (sampled lookups)."""
        self.rows += rows
        for name, values in columns.items():
            summary = self.features.get(name)
            if summary is not None:
                summary.update(values)

    def note_event_time(self, newest: datetime | None) -> None:
        if newest is not None and (self.newest_event is None or newest > self.newest_event):
            self.newest_event = newest

    def merge(self, other: ViewProfile) -> None:
        """Fold `other` (the same view) in; the window grows to cover both."""
        self.rows += other.rows
        self.window_start = min(self.window_start, other.window_start)
        self.window_end = max(self.window_end, other.window_end)
        self.note_event_time(other.newest_event)
        for name, summary in other.features.items():
            mine = self.features.get(name)
            if mine is None:
                self.features[name] = mine = FeatureSummary(name, summary.dtype)
            if mine.dtype == summary.dtype:
                mine.merge(summary)

    def to_proto(self) -> pb.Profile:
        message = pb.Profile(
            feature_view=self.feature_view, source=self.source, producer=self.producer,
            rows=self.rows, training_set=self.training_set,
            training_set_fingerprint=self.training_set_fingerprint,
            registry_version=self.registry_version,
            features=[s.to_proto() for s in self.features.values()],
        )
        message.window_start.FromDatetime(self.window_start)
        message.window_end.FromDatetime(self.window_end)
        message.created_at.FromDatetime(self.created_at)
        if self.newest_event is not None:
            message.newest_event.FromDatetime(self.newest_event)
        return message

    @classmethod
    def from_proto(cls, message: pb.Profile, types: Mapping[str, ValueType]) -> ViewProfile:
        """Decode, keeping the features `types` knows (a feature since removed is dropped).

        Raises:
            ValueError, RuntimeError: a sketch that does not decode.
        """
        summaries = {
            f.name: FeatureSummary.from_proto(f, types[f.name])
            for f in message.features if f.name in types
        }
        return cls(
            message.feature_view, message.source,
            message.window_start.ToDatetime(tzinfo=UTC), message.window_end.ToDatetime(tzinfo=UTC),
            summaries, message.rows,
            message.newest_event.ToDatetime(tzinfo=UTC) if message.HasField("newest_event") else None,
            message.producer, message.training_set, message.training_set_fingerprint,
            message.registry_version, message.created_at.ToDatetime(tzinfo=UTC),
        )


def merge_profiles(profiles: Iterable[ViewProfile]) -> ViewProfile | None:
    """One profile holding all of `profiles` (of one view), or None when there are none."""
    merged: ViewProfile | None = None
    for profile in profiles:
        if merged is None:
            merged = ViewProfile(
                profile.feature_view, profile.source, profile.window_start, profile.window_end,
                producer="merged", created_at=profile.created_at,
                training_set=profile.training_set,
                training_set_fingerprint=profile.training_set_fingerprint,
            )
        merged.merge(profile)
    return merged
