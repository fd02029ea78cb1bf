"""Materialization from Parquet history into the SQLite online store."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver import (
    Bool,
    Bytes,
    Entity,
    FeatureView,
    Field,
    Float32,
    Float64,
    Int32,
    Int64,
    ParquetSource,
    String,
    Timestamp,
)
from quiver.errors import DefinitionError, InvalidArgumentError, NotFoundError
from quiver_server import materialize as materialize_module
from quiver_server.config import QuiverConfig
from quiver_server.materialize import (
    MaterializeProgress,
    materialize_incremental,
    materialize_range,
)
from quiver_server.online.base import ViewRead, ViewReadResult, WriteBatch
from quiver_server.online.keys import encode_keys
from quiver_server.online.sqlite import SqliteOnlineStore
from quiver_server.registry.store import RegistryStore

T = datetime(2024, 5, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
USER = Entity(name="user", join_keys=(Field("user_id", Int64),))


def micros(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // US


def ts(*values: datetime | None) -> pa.Array:
    return pa.array(list(values), pa.timestamp("us", tz="UTC"))


def stats_view(name: str = "stats", **kwargs: Any) -> FeatureView:
    source = kwargs.pop(
        "source", ParquetSource(path=name, created_timestamp_field="created")
    )
    return FeatureView(
        name=name,
        entities=[USER],
        schema=[Field("count", Int64), Field("label", String)],
        source=source,
        **kwargs,
    )


def write_parquet(config: QuiverConfig, path: str, table: pa.Table) -> None:
    file = Path(config.offline_root) / path
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, file)


def history(
    users: list[int],
    events: list[datetime],
    counts: list[int | None],
    created: list[datetime | None] | None = None,
) -> pa.Table:
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "event_timestamp": ts(*events),
        "created": ts(*(created or [T] * len(users))),
        "count": pa.array(counts, pa.int64()),
        "label": pa.array([None if c is None else f"n{c}" for c in counts], pa.string()),
    })


def online(config: QuiverConfig, view: str, entities: list[Any]) -> ViewReadResult:
    table = RegistryStore(config.registry_path).latest().view_table(view)
    rows = [e if isinstance(e, tuple) else (e,) for e in entities]
    columns = [[r[i] for r in rows] for i in range(len(table.view.join_keys))]
    keys = encode_keys(table.view.join_keys, columns)
    with SqliteOnlineStore(config.resolve("data/online.db")) as store:
        [result] = store.read([ViewRead(table, keys, table.view.feature_names)])
    return result


def dump(config: QuiverConfig) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(config.resolve("data/online.db"))
    try:
        return conn.execute('SELECT * FROM "fv:shop:stats" ORDER BY 1').fetchall()
    finally:
        conn.close()


@pytest.fixture
def config(tmp_path: Path) -> QuiverConfig:
    return QuiverConfig(project="shop", repo_path=tmp_path)


def test_latest_row_per_entity_with_created_tie_break(config: QuiverConfig, make_registry: Any) -> None:
    make_registry(config, [USER], [stats_view()])
    # Two files, rows out of order: the winner is by time, not by position.
    write_parquet(config, "stats/part-0.parquet", history(
        [1, 2, 1, 3],
        [T + timedelta(hours=2), T, T + timedelta(hours=1), T + timedelta(hours=3)],
        [12, 20, 11, 32],
        [T + timedelta(minutes=5), T, T, T],
    ))
    write_parquet(config, "stats/part-1.parquet", history(
        [1, 3, 1],
        [T + timedelta(hours=2), T + timedelta(hours=3), T],
        [13, 31, 10],
        [T + timedelta(minutes=1), None, T],
    ))
    [result] = materialize_range(config, T, T + timedelta(days=1))
    assert (result.view, result.rows_read, result.entities) == ("stats", 7, 3)
    assert (result.rows_written, result.superseded) == (3, 0)
    read = online(config, "stats", [1, 2, 3])
    # User 1: equal event times, created breaks the tie; user 3: a null created loses.
    assert read.values == {"count": [12, 20, 32], "label": ["n12", "n20", "n32"]}
    assert read.event_ts == [
        micros(T + timedelta(hours=2)), micros(T), micros(T + timedelta(hours=3))
    ]


def test_window_start_is_inclusive_and_end_exclusive(config: QuiverConfig, make_registry: Any) -> None:
    make_registry(config, [USER], [stats_view()])
    start, end = T, T + timedelta(hours=1)
    write_parquet(config, "stats/part-0.parquet", history(
        [1, 2, 3, 4], [start - US, start, end - US, end], [1, 2, 3, 4]
    ))
    [result] = materialize_range(config, start, end)
    assert result.rows_read == 2
    assert online(config, "stats", [1, 2, 3, 4]).values["count"] == [None, 2, 3, None]
    assert RegistryStore(config.registry_path).latest().watermark("stats") == end


def test_incremental_runs_pick_up_only_new_rows(config: QuiverConfig, make_registry: Any) -> None:
    make_registry(config, [USER], [stats_view()])
    write_parquet(config, "stats/part-0.parquet", history(
        [1, 2], [T - timedelta(days=400), T], [1, 2]
    ))
    [first] = materialize_incremental(config, T + timedelta(hours=1))
    assert first.start is None and first.rows_read == 2  # ttl 0: from the beginning
    registry = RegistryStore(config.registry_path)
    assert registry.latest().watermark("stats") == T + timedelta(hours=1)

    write_parquet(config, "stats/part-1.parquet", history(
        [2, 3], [T + timedelta(hours=1), T + timedelta(hours=2)], [22, 3]
    ))
    [second] = materialize_incremental(config, T + timedelta(hours=3))
    assert second.start == T + timedelta(hours=1)
    assert (second.rows_read, second.entities) == (2, 2)
    assert online(config, "stats", [1, 2, 3]).values["count"] == [1, 22, 3]
    assert registry.latest().watermark("stats") == T + timedelta(hours=3)

    versions = registry.latest_version()
    [third] = materialize_incremental(config, T + timedelta(hours=3))
    assert third.rows_read == 0
    assert registry.latest_version() == versions  # nothing to record


def test_first_incremental_run_of_a_view_with_ttl_starts_at_end_minus_ttl(
    config: QuiverConfig, make_registry: Any
) -> None:
    make_registry(config, [USER], [stats_view(ttl=timedelta(days=1))])
    end = T + timedelta(days=10)
    write_parquet(config, "stats/part-0.parquet", history(
        [1, 2], [end - timedelta(days=1) - US, end - timedelta(days=1)], [1, 2]
    ))
    [result] = materialize_incremental(config, end)
    assert result.start == end - timedelta(days=1)
    assert online(config, "stats", [1, 2]).values["count"] == [None, 2]


def test_the_watermark_never_moves_back(config: QuiverConfig, make_registry: Any) -> None:
    make_registry(config, [USER], [stats_view()])
    write_parquet(config, "stats/part-0.parquet", history([1], [T], [1]))
    materialize_range(config, T, T + timedelta(days=2))
    materialize_range(config, T, T + timedelta(days=1))
    assert RegistryStore(config.registry_path).latest().watermark("stats") == T + timedelta(days=2)


def test_the_same_window_twice_changes_nothing(config: QuiverConfig, make_registry: Any) -> None:
    make_registry(config, [USER], [stats_view()])
    write_parquet(config, "stats/part-0.parquet", history(
        [1, 1, 2, 3], [T, T + US, T, T], [1, 2, None, 3]
    ))
    window = (T, T + timedelta(days=1))
    [first] = materialize_range(config, *window)
    before = dump(config)
    [second] = materialize_range(config, *window)
    assert dump(config) == before
    assert (second.rows_read, second.entities, second.superseded) == (4, 3, 0)
    assert first.entities == second.entities


def test_newer_online_rows_survive_materialization(config: QuiverConfig, make_registry: Any) -> None:
    snapshot = make_registry(config, [USER], [stats_view()])
    write_parquet(config, "stats/part-0.parquet", history([1, 2], [T, T], [1, 2]))
    table = snapshot.view_table("stats")
    with SqliteOnlineStore(config.resolve("data/online.db")) as store:
        # As a push of a fresher value would.
        store.write(table, WriteBatch(
            encode_keys(USER.join_keys, [[1]]), [micros(T + timedelta(hours=1))], [0],
            {"count": [100], "label": ["pushed"]},
        ))
    [result] = materialize_range(config, T, T + timedelta(days=1))
    assert (result.entities, result.rows_written, result.superseded) == (2, 1, 1)
    assert online(config, "stats", [1, 2]).values["label"] == ["pushed", "n2"]


def test_field_mapping_renames_source_columns(config: QuiverConfig, make_registry: Any) -> None:
    view = stats_view(source=ParquetSource(
        path="raw/stats.parquet", timestamp_field="ts", field_mapping={"uid": "user_id", "n": "count"}
    ))
    make_registry(config, [USER], [view])
    write_parquet(config, "raw/stats.parquet", pa.table({
        "uid": pa.array([7], pa.int64()),
        "ts": ts(T),
        "n": pa.array([70], pa.int64()),
        "label": pa.array(["seven"]),
        "unrelated": pa.array([1.5]),
    }))
    materialize_range(config, T, T + US)
    assert online(config, "stats", [7]).values == {"count": [70], "label": ["seven"]}


def test_naive_timestamps_are_utc_and_aware_ones_are_converted(
    config: QuiverConfig, make_registry: Any
) -> None:
    naive = stats_view("naive", source=ParquetSource(path="naive"))
    aware = stats_view("aware", source=ParquetSource(path="aware"))
    make_registry(config, [USER], [naive, aware])
    write_parquet(config, "naive/p.parquet", pa.table({
        "user_id": pa.array([1, 2], pa.int64()),
        # Nanoseconds, no zone: 2024-05-01T00:00:00 and one nanosecond before.
        "event_timestamp": pa.array(
            [micros(T) * 1000, micros(T) * 1000 - 1], pa.timestamp("ns")
        ),
        "count": pa.array([1, 2], pa.int64()),
        "label": pa.array(["a", "b"]),
    }))
    write_parquet(config, "aware/p.parquet", pa.table({
        "user_id": pa.array([1, 2], pa.int64()),
        # 02:00 at +02:00 is T; 01:59:59 at +02:00 is before T.
        "event_timestamp": pa.array(
            [micros(T), micros(T) - 1_000_000], pa.timestamp("us", tz="+02:00")
        ),
        "count": pa.array([1, 2], pa.int64()),
        "label": pa.array(["a", "b"]),
    }))
    results = materialize_range(config, T, T + timedelta(hours=1))
    assert [r.rows_read for r in results] == [1, 1]
    for view in ("naive", "aware"):
        read = online(config, view, [1, 2])
        assert read.values["count"] == [1, None], view
        assert read.event_ts == [micros(T), None], view


def test_every_value_type_and_multi_key_entities(
    config: QuiverConfig, make_registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny chunks exercise the running reduction and the chunked writes.
    monkeypatch.setattr(materialize_module, "COMPACT_ROWS", 5)
    monkeypatch.setattr(materialize_module, "WRITE_CHUNK_ROWS", 3)
    account = Entity(name="account", join_keys=(Field("bank", String), Field("number", Int32)))
    view = FeatureView(
        name="accounts",
        entities=[account],
        schema=[
            Field("balance", Float64), Field("rate", Float32), Field("frozen", Bool),
            Field("opened", Timestamp), Field("token", Bytes), Field("age", Int32),
        ],
        source=ParquetSource(path="accounts"),
    )
    make_registry(config, [account], [view])
    rng = random.Random(3)
    n = 40
    rows = {
        "bank": [rng.choice(["x", "y", "zz"]) for _ in range(n)],
        "number": [rng.randrange(4) for _ in range(n)],
        "event_timestamp": [T + timedelta(seconds=rng.randrange(10)) for _ in range(n)],
        "balance": [rng.random() for _ in range(n)],
        "rate": [rng.choice([0.5, 0.25, None]) for _ in range(n)],
        "frozen": [rng.random() < 0.5 for _ in range(n)],
        "opened": [T - timedelta(days=rng.randrange(100)) for _ in range(n)],
        "token": [rng.randbytes(4) for _ in range(n)],
        "age": [rng.randrange(100) for _ in range(n)],
    }
    write_parquet(config, "accounts/p.parquet", pa.table({
        "bank": pa.array(rows["bank"]).dictionary_encode(),
        "number": pa.array(rows["number"], pa.int64()),  # narrows to int32: every value fits
        "event_timestamp": pa.array(rows["event_timestamp"], pa.timestamp("ms", tz="UTC")),
        "balance": pa.array(rows["balance"], pa.float64()),
        "rate": pa.array(rows["rate"], pa.float64()),
        "frozen": pa.array(rows["frozen"]),
        "opened": pa.array(rows["opened"], pa.timestamp("s")),
        "token": pa.array(rows["token"], pa.binary()),
        "age": pa.array(rows["age"], pa.int16()),
    }))
    expected: dict[tuple[str, int], int] = {}
    for i in range(n):
        key = (rows["bank"][i], rows["number"][i])
        best = expected.get(key)
        # Later rows win ties, like the rows read last.
        if best is None or rows["event_timestamp"][i] >= rows["event_timestamp"][best]:
            expected[key] = i
    [result] = materialize_range(config, T, T + timedelta(days=1))
    assert (result.rows_read, result.entities) == (n, len(expected))
    entities = [*sorted(expected), ("none", 1)]
    read = online(config, "accounts", entities)
    winners = [expected[k] for k in sorted(expected)]
    assert read.event_ts == [micros(rows["event_timestamp"][i]) for i in winners] + [None]
    for feature in ("balance", "rate", "frozen", "token", "age"):
        assert read.values[feature] == [rows[feature][i] for i in winners] + [None], feature
    assert read.values["opened"] == [micros(rows["opened"][i]) for i in winners] + [None]


def test_a_wrong_column_type_fails_before_anything_is_written(
    config: QuiverConfig, make_registry: Any
) -> None:
    good, bad = stats_view("good"), stats_view("bad")
    make_registry(config, [USER], [good, bad])
    write_parquet(config, "good/p.parquet", history([1], [T], [1]))
    wrong = history([1], [T], [1]).set_column(3, "count", pa.array(["1"]))
    write_parquet(config, "bad/p.parquet", wrong)
    with pytest.raises(DefinitionError) as caught:
        materialize_range(config, T, T + timedelta(days=1))
    message = str(caught.value)
    for part in ("'bad'", "'count'", "expected int64", "type string"):
        assert part in message
    assert online(config, "good", [1]).event_ts == [None]
    assert RegistryStore(config.registry_path).latest().watermark("good") is None


def test_a_missing_column_is_a_definition_error(config: QuiverConfig, make_registry: Any) -> None:
    make_registry(config, [USER], [stats_view()])
    write_parquet(config, "stats/p.parquet", history([1], [T], [1]).drop_columns(["label"]))
    with pytest.raises(DefinitionError, match=r"'stats'.*no column 'label'.*expected string"):
        materialize_range(config, T, T + timedelta(days=1))


def test_view_selection(config: QuiverConfig, make_registry: Any) -> None:
    offline_only = stats_view("offline_only", online=False)
    make_registry(config, [USER], [stats_view(), offline_only])
    write_parquet(config, "stats/p.parquet", history([1], [T], [1]))
    results = materialize_range(config, T, T + timedelta(days=1))
    assert [r.view for r in results] == ["stats"]  # no source needed for the offline view
    with pytest.raises(InvalidArgumentError, match="'offline_only' is not online"):
        materialize_range(config, T, T + timedelta(days=1), ["offline_only"])
    with pytest.raises(NotFoundError, match="'nope'"):
        materialize_incremental(config, T, ["stats", "nope"])
    with pytest.raises(InvalidArgumentError, match="start"):
        materialize_range(config, T, T)


def test_progress_is_reported_through_the_callback_only(
    config: QuiverConfig, make_registry: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    make_registry(config, [USER], [stats_view()])
    write_parquet(config, "stats/p.parquet", history([1, 2], [T, T], [1, 2]))
    events: list[MaterializeProgress] = []
    [result] = materialize_range(config, T, T + timedelta(days=1), progress=events.append)
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""  # a library call never prints
    phases = [e.phase for e in events]
    assert phases[0] == "start" and phases[-1] == "done"
    assert {e.view for e in events} == {"stats"}
    assert [e.rows for e in events if e.phase == "read"][-1] == 2
    writes = [e for e in events if e.phase == "write"]
    assert writes[-1].rows == writes[-1].total == 2
    assert events[-1].result == result
    assert "2 rows read, 2 entities, 2 written" in str(result)


def test_nothing_is_reported_without_a_callback(
    config: QuiverConfig, make_registry: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    make_registry(config, [USER], [stats_view()])
    write_parquet(config, "stats/p.parquet", history([1], [T], [1]))
    materialize_range(config, T, T + timedelta(days=1))
    assert capsys.readouterr() == ("", "")


def test_the_cli_bars_leave_one_summary_line_per_view(
    config: QuiverConfig, make_registry: Any
) -> None:
    import io

    from quiver_server.progress import MaterializeBars

    make_registry(config, [USER], [stats_view()])
    write_parquet(config, "stats/p.parquet", history([1, 2], [T, T], [1, 2]))
    out = io.StringIO()  # not a terminal: no bar is drawn, only the summaries
    with MaterializeBars(out) as bars:
        [result] = materialize_range(config, T, T + timedelta(days=1), progress=bars)
    assert out.getvalue() == f"{result}\n"


def test_rows_from_the_future_wait_and_the_watermark_stays_near_now(
    config: QuiverConfig, make_registry: Any
) -> None:
    make_registry(config, [USER], [stats_view()])
    now = datetime.now(UTC)
    write_parquet(config, "stats/part-0.parquet", history(
        [1, 2, 3], [now - timedelta(hours=1), datetime(2100, 1, 1, tzinfo=UTC), now], [1, 2, 3],
        [now, now, now],
    ))
    [result] = materialize_range(config, T, datetime(9999, 1, 1, tzinfo=UTC))
    assert result.end <= now + timedelta(seconds=config.serving.max_future_seconds + 60)
    assert online(config, "stats", [1, 2, 3]).values["count"] == [1, None, 3]
    watermark = RegistryStore(config.registry_path).latest().watermark("stats")
    assert watermark is not None and watermark < now + timedelta(hours=1)
    with pytest.raises(InvalidArgumentError, match="max_future_seconds"):
        materialize_range(config, datetime(2200, 1, 1), datetime(2300, 1, 1))


def test_nanosecond_history_with_bounds_far_outside_its_range(
    config: QuiverConfig, make_registry: Any
) -> None:
    make_registry(config, [USER], [stats_view()])
    table = history([1], [T], [5]).set_column(
        1, "event_timestamp", pa.array([T], pa.timestamp("ns", tz="UTC"))
    )
    write_parquet(config, "stats/part-0.parquet", table)
    [result] = materialize_range(config, datetime(1, 1, 1, tzinfo=UTC), datetime.now(UTC))
    assert result.rows_read == 1
