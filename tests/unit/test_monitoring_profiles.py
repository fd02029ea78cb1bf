"""Profiles: merging, storage, corrupt files, drift rules and edge cases, thresholds, sampling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from quiver import (
    Bool,
    Bytes,
    DriftThresholds,
    Entity,
    FeatureView,
    Field,
    Float64,
    Int64,
    ParquetSource,
    String,
    Timestamp,
    ValueType,
)
from quiver.errors import DefinitionError
from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.monitoring.drift import (
    DEFAULT_THRESHOLDS,
    compare,
    jensen_shannon,
    psi,
    resolve_thresholds,
)
from quiver_server.monitoring.profile import ViewProfile, merge_profiles
from quiver_server.monitoring.sinks import ProfileAccumulator, ServingSampler
from quiver_server.monitoring.storage import MAGIC, ProfileStore
from quiver_server.monitoring.summary import FeatureSummary
from quiver_server.registry import convert

T0 = datetime(2024, 5, 1, tzinfo=UTC)
USER = Entity(name="user", join_keys=[Field("user_id", Int64)])
VIEW = FeatureView(
    name="stats", entities=[USER],
    schema=[Field("amount", Float64), Field("country", String), Field("flag", Bool),
            Field("seen", Timestamp), Field("blob", Bytes)],
    source=ParquetSource("stats"),
)
TYPES = {f.name: f.dtype for f in VIEW.schema}


def summary(name: str, dtype: ValueType, values: list[object] | np.ndarray) -> FeatureSummary:
    s = FeatureSummary(name, dtype)
    s.update(pa.array(values, type=dtype.arrow_type if dtype != ValueType.TIMESTAMP else pa.int64()))
    return s


def test_merged_summaries_equal_the_summary_of_everything() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(50, 10, 30_000)
    whole = summary("x", ValueType.FLOAT64, values)
    parts = [summary("x", ValueType.FLOAT64, chunk) for chunk in np.array_split(values, 7)]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    assert merged.count == whole.count == 30_000
    assert merged.minimum == values.min() and merged.maximum == values.max()
    assert merged.mean == pytest.approx(values.mean(), rel=1e-12)
    assert merged.variance == pytest.approx(values.var(ddof=1), rel=1e-9)
    assert merged.kll is not None and merged.kll.n == 30_000
    for rank in (0.1, 0.5, 0.9):
        estimate = merged.kll.get_quantile(rank)
        assert abs(float(np.mean(values <= estimate)) - rank) < 0.02


def test_summaries_count_nulls_and_keep_categories() -> None:
    s = summary("c", ValueType.STRING, ["a", None, "b", "a", None])
    assert (s.count, s.null_count, s.sketched_count) == (5, 2, 3)
    assert s.frequencies() == {"a": 2.0, "b": 1.0}
    flags = summary("f", ValueType.BOOL, [True, True, False, None])
    assert flags.frequencies() == {"true": 2.0, "false": 1.0}
    assert flags.mean == pytest.approx(2 / 3)
    seen = summary("t", ValueType.TIMESTAMP, [1_000_000, 3_000_000])
    assert seen.mean == 2.0  # seconds since the epoch
    blob = summary("b", ValueType.BYTES, [b"x", None])
    assert (blob.count, blob.null_count, blob.kll, blob.items) == (2, 1, None, None)
    nan = summary("x", ValueType.FLOAT64, [1.0, float("nan"), 3.0])
    assert nan.count == 3 and nan.numeric_count == 2 and nan.mean == 2.0


def test_many_distinct_strings_keep_the_most_frequent_and_count_the_rest() -> None:
    values = [f"id{i}" for i in range(30_000)] + ["common"] * 500
    s = summary("c", ValueType.STRING, values)
    assert s.count == s.sketched_count == 30_500
    frequencies = s.frequencies()
    assert frequencies["common"] >= 500 and len(frequencies) < 200
    # What the sketch does not track shows as "other" in drift, not as an error.
    result = compare("v", s, summary("c", ValueType.STRING, ["common"] * 100), DEFAULT_THRESHOLDS)
    assert result.status == pb.DRIFT_STATUS_DRIFT and np.isfinite(result.psi)


def test_profiles_round_trip_through_storage_and_merge_across_producers(tmp_path: Path) -> None:
    store = ProfileStore(str(tmp_path / "data"))
    rows = pa.table({
        "amount": [1.0, 2.0, None], "country": ["US", "DE", "US"], "flag": [True, False, None],
        "seen": pa.array([T0, T0, None], pa.timestamp("us", tz="UTC")),
        "blob": [b"a", b"b", None],
    })
    for producer in ("host-1", "host-2"):
        profile = ViewProfile.for_view(VIEW, "serving", T0, T0 + timedelta(hours=1),
                                       producer=producer)
        profile.observe(rows)
        store.write(profile)
    scan = store.scan("stats", ("serving",), TYPES)
    assert scan.skipped == {} and len(scan.profiles) == 2
    merged = merge_profiles(scan.profiles)
    assert merged is not None and merged.rows == 6
    assert merged.features["amount"].count == 6 and merged.features["amount"].null_count == 2
    assert merged.features["country"].frequencies() == {"US": 4.0, "DE": 2.0}
    # Windows outside the asked range are not read.
    assert store.scan("stats", ("serving",), TYPES, after=T0 + timedelta(hours=1)).profiles == []


def test_corrupt_profile_files_are_reported_by_name_and_skipped(tmp_path: Path) -> None:
    store = ProfileStore(str(tmp_path / "data"))
    profile = ViewProfile.for_view(VIEW, "materialize", T0, T0 + timedelta(days=1))
    profile.observe(pa.table({"amount": [1.0], "country": ["US"], "flag": [True],
                              "seen": pa.array([T0]), "blob": [b"x"]}))
    good = store.write(profile)
    directory = Path(good).parent
    (directory / "garbage.qprof").write_bytes(b"not a profile at all")
    data = Path(good).read_bytes()
    (directory / "truncated.qprof").write_bytes(data[:-9])
    flipped = bytearray(data)
    flipped[len(MAGIC) + 10] ^= 0xFF
    (directory / "flipped.qprof").write_bytes(bytes(flipped))
    scan = store.scan("stats", ("materialize",), TYPES)
    assert len(scan.profiles) == 1
    assert {Path(p).name: why for p, why in scan.skipped.items()} == {
        "garbage.qprof": "not a Quiver profile file (bad header)",
        "truncated.qprof": f"truncated or padded: {len(data) - 9} bytes, expected {len(data)}",
        "flipped.qprof": "checksum mismatch",
    }


def test_a_missing_profile_directory_is_created(tmp_path: Path) -> None:
    store = ProfileStore(str(tmp_path / "nowhere" / "data"))
    assert store.scan("stats", ("materialize",), TYPES).profiles == []
    store.ensure()
    assert (tmp_path / "nowhere" / "data" / "_monitoring" / "profiles").is_dir()
    assert store.read_run() is None


def test_psi_and_jensen_shannon_of_known_distributions() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert jensen_shannon([0.5, 0.5], [0.5, 0.5]) == 0.0
    # PSI = sum((c - r) ln(c / r)).
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(
        (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5), rel=1e-3
    )
    # Disjoint distributions are as far apart as Jensen-Shannon (base 2) goes.
    assert jensen_shannon([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0, abs=1e-2)


def test_a_shift_drifts_and_the_same_distribution_does_not() -> None:
    rng = np.random.default_rng(11)
    reference = summary("x", ValueType.FLOAT64, rng.normal(0, 1, 20_000))
    same = summary("x", ValueType.FLOAT64, rng.normal(0, 1, 20_000))
    shifted = summary("x", ValueType.FLOAT64, rng.normal(1, 1, 20_000))
    ok = compare("v", reference, same, DEFAULT_THRESHOLDS)
    assert ok.status == pb.DRIFT_STATUS_OK and ok.psi < 0.05 and list(ok.violations) == []
    drift = compare("v", reference, shifted, DEFAULT_THRESHOLDS)
    assert drift.status == pb.DRIFT_STATUS_DRIFT
    assert drift.psi > 0.5 and list(drift.violations) == ["psi", "jensen_shannon"]


def test_edge_cases_have_defined_results() -> None:
    reference = summary("x", ValueType.FLOAT64, [1.0, 2.0, 3.0, 4.0])
    # No reference yet.
    assert compare("v", None, reference, DEFAULT_THRESHOLDS).status == pb.DRIFT_STATUS_NO_REFERENCE
    empty = FeatureSummary("x", ValueType.FLOAT64)
    assert compare("v", empty, reference, DEFAULT_THRESHOLDS).status == pb.DRIFT_STATUS_NO_REFERENCE
    # Nothing observed now.
    assert compare("v", reference, None, DEFAULT_THRESHOLDS).status == pb.DRIFT_STATUS_NO_CURRENT
    # An all-null window: no distribution to compare, the null rate decides.
    all_null = summary("x", ValueType.FLOAT64, [None, None])
    result = compare("v", reference, all_null, DEFAULT_THRESHOLDS)
    assert (result.status, result.psi, result.jensen_shannon) == (pb.DRIFT_STATUS_DRIFT, 0.0, 0.0)
    assert list(result.violations) == ["null_rate"] and result.current_null_rate == 1.0
    # A category the reference never saw: a finite, large score.
    before = summary("c", ValueType.STRING, ["a", "b"] * 50)
    after = summary("c", ValueType.STRING, ["a", "new"] * 50)
    result = compare("v", before, after, DEFAULT_THRESHOLDS)
    assert result.status == pb.DRIFT_STATUS_DRIFT and np.isfinite(result.psi) and result.psi > 1
    # Bytes keep counts only.
    blob = summary("b", ValueType.BYTES, [b"x", b"y"])
    result = compare("v", blob, blob, DEFAULT_THRESHOLDS)
    assert (result.status, result.kind, result.psi) == (pb.DRIFT_STATUS_OK, "", 0.0)
    # A constant reference still bins: values elsewhere are drift.
    constant = summary("x", ValueType.FLOAT64, [5.0] * 100)
    moved = summary("x", ValueType.FLOAT64, [6.0] * 100)
    assert compare("v", constant, moved, DEFAULT_THRESHOLDS).status == pb.DRIFT_STATUS_DRIFT


def test_thresholds_come_from_the_feature_then_the_view_then_the_defaults() -> None:
    view = FeatureView(
        name="v", entities=[USER], source=ParquetSource("v"),
        schema=[Field("a", Float64, drift=DriftThresholds(psi=0.5)), Field("b", Float64)],
        drift=DriftThresholds(psi=0.3, null_rate=0.1),
    )
    stored = convert.view_from_proto(convert.view_to_proto(view), {"user": USER})
    assert stored == view
    a, b = stored.schema
    assert resolve_thresholds(a.drift, stored.drift) == DriftThresholds(0.5, 0.15, 0.1)
    assert resolve_thresholds(b.drift, stored.drift) == DriftThresholds(0.3, 0.15, 0.1)
    assert resolve_thresholds(None, None) == DEFAULT_THRESHOLDS
    # A view without thresholds stores none (its registry entry is unchanged).
    assert not convert.view_to_proto(VIEW).HasField("drift")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"psi": 0}, "DriftThresholds.psi must be a positive number, got 0"),
    ({"jensen_shannon": 1.5}, "DriftThresholds.jensen_shannon must be a number in (0, 1], got 1.5"),
    ({"null_rate": "high"}, "DriftThresholds.null_rate must be a number in (0, 1], got 'high'"),
])
def test_bad_thresholds_are_definition_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        DriftThresholds(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


class _Column:
    def __init__(self, values: list[object], statuses: list[int]) -> None:
        self.values, self.statuses = values, statuses


class _Table:
    view = VIEW


class _Part:
    table = _Table()

    def __init__(self, features: list[str], positions: list[int]) -> None:
        self.features, self.positions = features, positions


def test_sampled_lookups_become_serving_profiles(tmp_path: Path) -> None:
    store = ProfileStore(str(tmp_path / "data"))
    accumulator = ProfileAccumulator(store, 3600, 60.0, clock=lambda: T0 + timedelta(minutes=5))
    draws = iter([0.0, 0.9, 0.0])  # sampled, skipped, sampled at rate 0.5
    sampler = ServingSampler(accumulator, 0.5, random_source=lambda: next(draws))
    part = _Part(["amount", "country"], [0, 1])
    present, not_found, null = 1, 3, 2
    sampler.observe([part], [_Column([1.5, 2.5], [present, present]),
                             _Column(["US", "DE"], [present, present])])
    sampler.observe([part], [_Column([9.0], [present]), _Column(["FR"], [present])])
    sampler.observe([part], [_Column([0.0, 4.0], [not_found, present]),
                             _Column(["", ""], [not_found, null])])
    written = accumulator.flush()
    assert len(written) == 1 and "/stats/serving/20240501T000000Z--20240501T010000Z/" in written[0]
    (profile,) = store.scan("stats", ("serving",), TYPES).profiles
    assert profile.rows == 4
    amount, country = profile.features["amount"], profile.features["country"]
    assert (amount.count, amount.null_count, amount.mean) == (4, 1, pytest.approx(8 / 3))
    assert (country.count, country.null_count) == (4, 2)
    assert country.frequencies() == {"US": 1.0, "DE": 1.0}
    assert profile.features["flag"].count == 0, "features not looked up stay empty"
    assert accumulator.flush() == [], "nothing new, nothing written"


def test_profiling_is_best_effort_and_never_fails_the_work(tmp_path: Path) -> None:
    from quiver_server.monitoring.sinks import ProfileWriter

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    rows = pa.table({"amount": [1.0], "country": ["US"], "flag": [True],
                     "seen": pa.array([T0]), "blob": [b"x"]})
    # The offline store cannot be written: nothing is stored, nothing is raised.
    writer = ProfileWriter(ProfileStore(str(blocked)))
    assert writer.record(VIEW, "materialize", rows, T0, T0 + timedelta(days=1)) is None
    # Values that do not fit the view's types are dropped with a warning.
    accumulator = ProfileAccumulator(ProfileStore(str(tmp_path / "data")), 3600, 60.0)
    accumulator.add(VIEW, "push", {"amount": pa.array(["not a number"])}, 1)
    accumulator.add_rows(VIEW, "push", rows, "no_such_column")
    assert len(accumulator.flush()) == 1, "the good batch is kept"


def test_sampled_values_held_between_flushes_are_bounded(tmp_path: Path) -> None:
    """Big lookups must not pile up values (memory, and the time the flush holds the GIL
    turning them into sketches): past the bound, lookups go unsampled until the flush."""
    store = ProfileStore(str(tmp_path / "data"))
    accumulator = ProfileAccumulator(store, 3600, 60.0, clock=lambda: T0)
    sampler = ServingSampler(accumulator, 1.0, max_values=4)
    part = _Part(["amount", "country"], [0, 1])
    present = 1
    for amount in (1.0, 2.0, 3.0):  # 2 values each: the third lookup is over the bound
        sampler.observe([part], [_Column([amount], [present]), _Column(["US"], [present])])
    accumulator.flush()
    (first,) = store.scan("stats", ("serving",), TYPES).profiles
    assert (first.rows, first.features["amount"].maximum) == (2, 2.0)
    # The flush emptied the buffer: sampling resumes.
    sampler.observe([part], [_Column([7.0], [present]), _Column(["DE"], [present])])
    accumulator.flush()
    rows = sorted(p.rows for p in store.scan("stats", ("serving",), TYPES).profiles)
    assert rows == [1, 2]
