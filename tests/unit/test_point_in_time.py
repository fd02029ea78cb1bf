"""Hand-computed edge cases of the point-in-time join (DESIGN.md, "Semantics that must be exact").

Every test runs four ways: features gathered from the cached index layout,
gathered by one scan of the history (a cache too small to hold them), with
event times rank-compressed in the index (as for histories spanning centuries),
and on the Spark engine, whose result must equal the local one cell for cell.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver import Entity, FeatureView, Field, Float64, Int64, ParquetSource, String
from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver_flight import history
from quiver_flight.pit import FEATURE_REF_METADATA, PointInTimeEngine
from quiver_server.registry.snapshot import FeatureRef

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
US = pa.timestamp("us", tz="UTC")

user = Entity("user", (Field("user_id", Int64),))
merchant = Entity("merchant", (Field("merchant_id", String),))
device = Entity("device", (Field("device_os", String), Field("device_model", Int64)))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def write(root: Path, name: str, columns: dict[str, Any], *, part: str = "part-0") -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    table = pa.table({
        k: pa.array(v, US) if k in ("event_timestamp", "created") else v for k, v in columns.items()
    })
    pq.write_table(table, root / name / f"{part}.parquet")


def make_view(
    name: str, entities: Sequence[Entity], features: Sequence[Field], *, ttl: float = 0,
    created: bool = True, **source: Any,
) -> FeatureView:
    return FeatureView(
        name=name, entities=entities, schema=features,
        source=ParquetSource(name, created_timestamp_field="created" if created else None, **source),
        ttl=timedelta(seconds=ttl),
    )


def refs(view: FeatureView, *names: str) -> list[FeatureRef]:
    return [FeatureRef(view, view.feature(n)) for n in (names or view.feature_names)]


def spine(user_ids: Sequence[int | None], times: Sequence[datetime], **extra: Any) -> pa.Table:
    return pa.table({"user_id": pa.array(user_ids, pa.int64()),
                     "event_timestamp": pa.array(times, US), **extra})


@pytest.fixture(params=["cached", "scan", "ranked", pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.timeout(600)])])
def engine(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PointInTimeEngine]:
    if request.param == "spark":
        # The Spark engine on the same case, checked cell for cell against the local one.
        from spark_support import BothEngines

        request.getfixturevalue("spark")
        yield BothEngines(str(tmp_path))  # type: ignore[misc]
        return
    if request.param == "ranked":
        monkeypatch.setattr(history, "MAX_COMPOSITE_BITS", 0)
    cache = 0 if request.param == "scan" else 1 << 30
    yield PointInTimeEngine(str(tmp_path), cache_bytes=cache, batch_rows=3)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


def join(engine: PointInTimeEngine, table: pa.Table, features: list[FeatureRef], **kw: Any) -> pa.Table:
    return engine.join_table(table, features, **kw)


def test_event_at_the_spine_time_is_used_and_a_later_one_never(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [1, 1, 1], "event_timestamp": [at(0), at(10), at(10.000001)],
                          "created": [at(0), at(10), at(10)], "amount": [1.0, 2.0, 3.0]})
    view = make_view("stats", [user], [Field("amount", Float64)])
    out = join(engine, spine([1, 1, 1], [at(10), at(9.999999), at(10.000001)]), refs(view))
    assert out["amount"].to_pylist() == [2.0, 1.0, 3.0]


def test_ttl_bound_is_inclusive_and_one_microsecond_outside_is_null(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [1, 2], "event_timestamp": [at(0), at(0)],
                          "created": [at(0), at(0)], "amount": [1.0, 2.0]})
    view = make_view("stats", [user], [Field("amount", Float64)], ttl=60)
    out = join(engine, spine([1, 2, 1], [at(60), at(60.000001), at(59)]), refs(view))
    assert out["amount"].to_pylist() == [1.0, None, 1.0]


def test_ttl_uses_only_the_latest_row_not_an_older_one_inside(engine: PointInTimeEngine, root: Path) -> None:
    # The latest row before t is the one considered; an older row is never
    # preferred, and the latest one outside the ttl means null.
    write(root, "stats", {"user_id": [1, 1], "event_timestamp": [at(0), at(100)],
                          "created": [at(0), at(100)], "amount": [1.0, 2.0]})
    view = make_view("stats", [user], [Field("amount", Float64)], ttl=30)
    out = join(engine, spine([1, 1, 1], [at(20), at(120), at(131)]), refs(view))
    assert out["amount"].to_pylist() == [1.0, 2.0, None]


def test_ttl_zero_means_unlimited(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [1], "event_timestamp": [at(-10 * 365 * 86400)],
                          "created": [at(0)], "amount": [7.0]})
    view = make_view("stats", [user], [Field("amount", Float64)], ttl=0)
    out = join(engine, spine([1], [at(0)]), refs(view))
    assert out["amount"].to_pylist() == [7.0]


def test_equal_event_times_are_broken_by_the_greatest_created_time(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [1, 1, 1], "event_timestamp": [at(5), at(5), at(5)],
                          "created": [at(7), at(9), at(8)], "amount": [1.0, 2.0, 3.0]})
    view = make_view("stats", [user], [Field("amount", Float64)])
    assert join(engine, spine([1], [at(5)]), refs(view))["amount"].to_pylist() == [2.0]


def test_created_times_keep_their_own_nanosecond_precision(engine: PointInTimeEngine, root: Path) -> None:
    # Microsecond event times, nanosecond created times 500 ns apart: the later created wins.
    (root / "stats").mkdir(parents=True)
    base = pa.scalar(at(5), US).cast(pa.int64()).as_py() * 1000
    pq.write_table(pa.table({
        "user_id": [1, 1],
        "event_timestamp": pa.array([at(5), at(5)], US),
        "created": pa.array([base + 900, base + 400], pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
        "amount": [1.0, 2.0],
    }), root / "stats" / "part-0.parquet")
    view = make_view("stats", [user], [Field("amount", Float64)])
    assert join(engine, spine([1], [at(5)]), refs(view))["amount"].to_pylist() == [1.0]


def test_created_ties_go_to_the_row_last_in_the_source_and_null_created_loses(
    engine: PointInTimeEngine, root: Path
) -> None:
    write(root, "stats", {"user_id": [1, 1, 2, 2], "event_timestamp": [at(5)] * 4,
                          "created": [at(9), at(9), None, at(1)], "amount": [1.0, 2.0, 3.0, 4.0]},
          part="a")
    write(root, "stats", {"user_id": [1], "event_timestamp": [at(5)], "created": [at(8)],
                          "amount": [5.0]}, part="b")
    view = make_view("stats", [user], [Field("amount", Float64)])
    out = join(engine, spine([1, 2], [at(6), at(6)]), refs(view))
    assert out["amount"].to_pylist() == [2.0, 4.0]


def test_without_created_column_the_last_row_in_the_source_wins(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [1, 1], "event_timestamp": [at(5), at(5)], "amount": [1.0, 2.0]})
    view = make_view("stats", [user], [Field("amount", Float64)], created=False)
    assert join(engine, spine([1], [at(5)]), refs(view))["amount"].to_pylist() == [2.0]


def test_duplicate_spine_rows_are_all_kept(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [1], "event_timestamp": [at(0)], "created": [at(0)], "amount": [1.5]})
    view = make_view("stats", [user], [Field("amount", Float64)])
    out = join(engine, spine([1, 1, 1, 1], [at(1)] * 4, label=[1, 0, 1, 0]), refs(view))
    assert out.num_rows == 4
    assert out["amount"].to_pylist() == [1.5] * 4
    assert out["label"].to_pylist() == [1, 0, 1, 0]


def test_entities_without_history_and_null_keys_get_null_features(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [1], "event_timestamp": [at(0)], "created": [at(0)],
                          "amount": [1.0], "count": [3]})
    view = make_view("stats", [user], [Field("amount", Float64), Field("count", Int64)])
    out = join(engine, spine([42, None, 1], [at(1)] * 3), refs(view))
    assert out["amount"].to_pylist() == [None, None, 1.0]
    assert out["count"].to_pylist() == [None, None, 3]


def test_a_null_feature_in_the_latest_row_stays_null(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [1, 1], "event_timestamp": [at(0), at(10)],
                          "created": [at(0), at(10)], "amount": [1.0, None], "city": ["a", None],
                          "count": [1, 2]})
    view = make_view("stats", [user], [Field("amount", Float64), Field("city", String),
                                        Field("count", Int64)])
    out = join(engine, spine([1, 1], [at(5), at(15)]), refs(view))
    assert out["amount"].to_pylist() == [1.0, None]
    assert out["city"].to_pylist() == ["a", None]
    assert out["count"].to_pylist() == [1, 2]


def test_views_with_different_and_composite_join_keys(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "users", {"user_id": [1, 2], "event_timestamp": [at(0), at(0)],
                          "created": [at(0), at(0)], "age": [30, 40]})
    write(root, "merchants", {"merchant_id": ["m1", "m2", "m1"],
                              "event_timestamp": [at(0), at(0), at(20)],
                              "created": [at(0), at(0), at(20)], "risk": [0.1, 0.2, 0.9]})
    write(root, "devices", {"device_os": ["ios", "ios", "android"], "device_model": [1, 2, 1],
                            "event_timestamp": [at(0)] * 3, "created": [at(0)] * 3,
                            "crashes": [10, 20, 30]})
    users = make_view("users", [user], [Field("age", Int64)], ttl=0)
    merchants = make_view("merchants", [merchant], [Field("risk", Float64)], ttl=15)
    devices = make_view("devices", [device], [Field("crashes", Int64)])
    table = pa.table({
        "merchant_id": ["m1", "m2", "m1", "m3"],
        "device_model": [2, 1, 1, 2],
        "user_id": pa.array([2, 1, 3, 1], pa.int64()),
        "device_os": ["ios", "ios", "android", None],
        "event_timestamp": pa.array([at(10), at(16), at(25), at(1)], US),
    })
    out = join(engine, table, [*refs(users), *refs(merchants), *refs(devices)])
    assert out["age"].to_pylist() == [40, 30, None, 30]
    assert out["risk"].to_pylist() == [0.1, None, 0.9, None]
    assert out["crashes"].to_pylist() == [20, 10, 30, None]
    # Features of different views interleaved: each column where it was asked for.
    write(root, "people", {"user_id": [1, 2], "event_timestamp": [at(0), at(0)],
                           "created": [at(0), at(0)], "age": [30, 40], "level": ["a", "b"]})
    people = make_view("people", [user], [Field("age", Int64), Field("level", String)])
    mixed = join(engine, table, [*refs(people, "age"), *refs(merchants), *refs(people, "level")])
    assert mixed.schema.names[-3:] == ["age", "risk", "level"]
    assert mixed["age"].to_pylist() == [40, 30, None, 30]
    assert mixed["risk"].to_pylist() == [0.1, None, 0.9, None]
    assert mixed["level"].to_pylist() == ["b", "a", None, "a"]


def test_spine_columns_order_and_types_are_unchanged(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [3, 1, 2], "event_timestamp": [at(0), at(0), at(0)],
                          "created": [at(0)] * 3, "amount": [3.0, 1.0, 2.0]})
    view = make_view("stats", [user], [Field("amount", Float64)])
    tokyo = pa.timestamp("ns", tz="Asia/Tokyo")
    table = pa.table({
        "label": pa.array([True, False, True, False, True], pa.bool_()),
        "event_timestamp": pa.array([at(5), at(1), at(-1), at(3), at(2)], tokyo),
        "note": pa.array(["e", "b", "a", "d", "c"], pa.large_string()),
        "user_id": pa.array([2, 1, 3, 3, 1], pa.int32()),
    }).replace_schema_metadata({"source": "test"})
    out = join(engine, table, refs(view))
    assert out.schema.names == ["label", "event_timestamp", "note", "user_id", "amount"]
    assert out.select(table.schema.names).to_pylist() == table.to_pylist()
    assert [f.type for f in out.schema][:4] == [f.type for f in table.schema]
    assert out["amount"].to_pylist() == [2.0, 1.0, None, 3.0, 1.0]
    assert out.schema.field("amount").metadata == {FEATURE_REF_METADATA: b"stats:amount"}


def test_spine_times_finer_than_microseconds_round_the_right_way(engine: PointInTimeEngine, root: Path) -> None:
    # History in microseconds; spine in nanoseconds, half a microsecond past.
    write(root, "stats", {"user_id": [1, 2], "event_timestamp": [at(0), at(0.000001)],
                          "created": [at(0)] * 2, "amount": [1.0, 2.0]})
    view = make_view("stats", [user], [Field("amount", Float64)], ttl=1)
    base = int(T0.timestamp()) * 10**9
    times = pa.array([base + 500, base + 10**9, base + 10**9 + 500, base + 10**9 + 1500],
                     pa.timestamp("ns", tz="UTC"))
    out = join(engine, pa.table({"user_id": [1, 1, 1, 2], "event_timestamp": times}), refs(view))
    # t = 0.5us: e = 0 <= t. t = 1s: e = 0 is exactly t - ttl. t = 1s + 0.5us:
    # e = 0 < t - ttl, outside. t = 1s + 1.5us: e = 1us < t - ttl = 1.5us, outside.
    assert out["amount"].to_pylist() == [1.0, 1.0, None, None]


def test_naive_history_timestamps_are_read_as_utc(engine: PointInTimeEngine, root: Path) -> None:
    (root / "stats").mkdir()
    naive = pa.timestamp("us")
    pq.write_table(pa.table({
        "user_id": [1, 1], "event_timestamp": pa.array([at(0).replace(tzinfo=None),
                                                        at(10).replace(tzinfo=None)], naive),
        "amount": [1.0, 2.0],
    }), root / "stats" / "part.parquet")
    view = make_view("stats", [user], [Field("amount", Float64)], created=False)
    assert join(engine, spine([1, 1], [at(9), at(10)]), refs(view))["amount"].to_pylist() == [1.0, 2.0]


def test_field_mapping_and_several_files(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"uid": [1], "event_timestamp": [at(0)], "created": [at(0)],
                          "amt_raw": [1.0]}, part="a")
    write(root, "stats", {"uid": [1], "event_timestamp": [at(5)], "created": [at(5)],
                          "amt_raw": [2.0]}, part="b")
    view = make_view("stats", [user], [Field("amount", Float64)],
                     field_mapping={"uid": "user_id", "amt_raw": "amount"})
    assert join(engine, spine([1, 1], [at(4), at(6)]), refs(view))["amount"].to_pylist() == [1.0, 2.0]


def test_full_feature_names_and_collisions(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "a", {"user_id": [1], "event_timestamp": [at(0)], "created": [at(0)], "x": [1.0]})
    write(root, "b", {"user_id": [1], "event_timestamp": [at(0)], "created": [at(0)], "x": [2.0]})
    a = make_view("a", [user], [Field("x", Float64)])
    b = make_view("b", [user], [Field("x", Float64)])
    out = join(engine, spine([1], [at(1)]), [*refs(a), *refs(b)], full_feature_names=True)
    assert out.schema.names[-2:] == ["a__x", "b__x"]
    with pytest.raises(InvalidArgumentError, match="full_feature_names"):
        join(engine, spine([1], [at(1)]), [*refs(a), *refs(b)])
    with pytest.raises(InvalidArgumentError, match="spine already has"):
        join(engine, spine([1], [at(1)], x=[0.0]), refs(a))


@pytest.mark.parametrize(
    ("table", "field", "reason"),
    [
        (pa.table({"event_timestamp": pa.array([T0], US)}), "spine.user_id", "SPINE_MISSING_JOIN_KEY"),
        (pa.table({"user_id": ["1"], "event_timestamp": pa.array([T0], US)}), "spine.user_id",
         "SPINE_KEY_TYPE"),
        (pa.table({"user_id": [1], "ts": pa.array([T0], US)}), "spine.event_timestamp",
         "SPINE_MISSING_TIMESTAMP"),
        (pa.table({"user_id": [1], "event_timestamp": pa.array([T0.replace(tzinfo=None)],
                                                               pa.timestamp("us"))}),
         "spine.event_timestamp", "NAIVE_TIMESTAMP"),
        (pa.table({"user_id": [1], "event_timestamp": ["2024-01-01T00:00:00Z"]}),
         "spine.event_timestamp", "SPINE_TIMESTAMP_TYPE"),
        (pa.table({"user_id": [1, 2], "event_timestamp": pa.array([T0, None], US)}),
         "spine.event_timestamp", "SPINE_NULL_TIMESTAMP"),
    ],
)
def test_bad_spines_are_refused_naming_the_column(
    engine: PointInTimeEngine, root: Path, table: pa.Table, field: str, reason: str
) -> None:
    write(root, "stats", {"user_id": [1], "event_timestamp": [at(0)], "created": [at(0)], "amount": [1.0]})
    view = make_view("stats", [user], [Field("amount", Float64)])
    with pytest.raises(InvalidArgumentError) as info:
        join(engine, table, refs(view))
    assert info.value.reason == reason
    assert [v.field for v in info.value.violations] == [field]
    assert field.split(".")[1] in info.value.message


def test_history_without_a_declared_column_is_a_failed_precondition(engine: PointInTimeEngine, root: Path) -> None:
    write(root, "stats", {"user_id": [1], "event_timestamp": [at(0)], "created": [at(0)], "amount": [1.0]})
    view = make_view("stats", [user], [Field("missing", Float64)])
    with pytest.raises(FailedPreconditionError, match="no column 'missing'"):
        join(engine, spine([1], [at(1)]), refs(view))


def test_empty_spine_and_missing_history_directory(engine: PointInTimeEngine, root: Path) -> None:
    (root / "stats").mkdir()
    view = make_view("stats", [user], [Field("amount", Float64)])
    out = join(engine, spine([1], [at(1)]), refs(view))
    assert out["amount"].to_pylist() == [None]
    empty = join(engine, spine([], []), refs(view))
    assert empty.num_rows == 0 and empty.schema.names == ["user_id", "event_timestamp", "amount"]
    with pytest.raises(FailedPreconditionError, match="does not exist"):
        join(engine, spine([1], [at(1)]), refs(make_view("nowhere", [user], [Field("amount", Float64)])))


def test_a_changed_history_gets_a_new_index(root: Path) -> None:
    engine = PointInTimeEngine(str(root))
    write(root, "stats", {"user_id": [1], "event_timestamp": [at(0)], "created": [at(0)], "amount": [1.0]})
    view = make_view("stats", [user], [Field("amount", Float64)])
    assert join(engine, spine([1], [at(9)]), refs(view))["amount"].to_pylist() == [1.0]
    write(root, "stats", {"user_id": [1], "event_timestamp": [at(5)], "created": [at(5)],
                          "amount": [2.0]}, part="later")
    assert join(engine, spine([1], [at(9)]), refs(view))["amount"].to_pylist() == [2.0]


def test_a_cache_too_small_for_every_view_evicts_and_stays_exact(root: Path) -> None:
    write(root, "a", {"user_id": [1, 2], "event_timestamp": [at(0), at(0)], "created": [at(0)] * 2,
                      "x": [1.0, 2.0]})
    write(root, "b", {"user_id": [1, 2], "event_timestamp": [at(0), at(0)], "created": [at(0)] * 2,
                      "y": [3.0, 4.0]})
    a = make_view("a", [user], [Field("x", Float64)])
    b = make_view("b", [user], [Field("y", Float64)])
    whole = PointInTimeEngine(str(root))
    whole.join_table(spine([1], [at(1)]), [*refs(a), *refs(b)])
    one_view = whole.cache.nbytes // 2 + 1  # room for one view's index and block only
    engine = PointInTimeEngine(str(root), cache_bytes=one_view)
    for _ in range(3):
        assert join(engine, spine([2, 1], [at(1)] * 2), refs(a))["x"].to_pylist() == [2.0, 1.0]
        assert join(engine, spine([1, 2], [at(1)] * 2), refs(b))["y"].to_pylist() == [3.0, 4.0]
        assert 0 < engine.cache.nbytes <= one_view
