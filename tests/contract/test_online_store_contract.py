"""The online store contract (online/base.py): every store passes these unchanged.

Timestamps are int microseconds since the epoch, UTC. The write rule: a row
replaces the stored row of its key only if (event_ts, created_ts) >= the
stored pair.
"""

from __future__ import annotations

import random
import threading
from typing import TYPE_CHECKING, Any

from quiver import Bool, Bytes, Float32, Float64, Int32, Int64, String, Timestamp
from quiver_server.online.base import OnlineStore, ViewRead

EVERY_TYPE = {
    "i64": Int64,
    "i32": Int32,
    "f64": Float64,
    "f32": Float32,
    "flag": Bool,
    "name": String,
    "blob": Bytes,
    "seen_at": Timestamp,
}
if TYPE_CHECKING:
    from conftest import Kit

T0 = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z in microseconds


def test_healthy(store: OnlineStore) -> None:
    assert store.healthy() is True


def test_round_trip_every_value_type_with_nulls(store: OnlineStore, kit: Kit) -> None:
    table = kit.table(features=EVERY_TYPE)
    rows: dict[str, list[Any]] = {
        "i64": [2**63 - 1, -(2**63), None, 0],
        "i32": [2**31 - 1, -(2**31), None, 0],
        "f64": [3.141592653589793, -1e300, None, 0.0],
        "f32": [1.5, -0.25, None, 0.0],  # exactly representable in float32
        "flag": [True, False, None, False],
        "name": ["héllo ✓", "", None, "x" * 1000],
        "blob": [b"\x00\xff\x00", b"", None, bytes(range(256))],
        "seen_at": [T0, -1_000_000, None, 0],
    }
    result = store.write(table, kit.batch(table, [1, 2, 3, 4], [T0, T0 + 1, T0 + 2, T0 + 3], **rows))
    assert result.rows == 4 and result.superseded == 0

    read = kit.read(store, table, [1, 2, 3, 4])
    assert read.event_ts == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert read.values == rows
    for feature, values in read.values.items():
        for value in values:
            if value is None:
                continue
            expected = {Int64: int, Int32: int, Float64: float, Float32: float, Bool: bool,
                        String: str, Bytes: bytes, Timestamp: int}[EVERY_TYPE[feature]]
            assert type(value) is expected, (feature, value)


def test_unknown_keys_are_not_found(store: OnlineStore, kit: Kit) -> None:
    table = kit.table()
    store.write(table, kit.batch(table, [1], T0, value=[10]))
    read = kit.read(store, table, [404, 1, 405])
    assert read.event_ts == [None, T0, None]
    assert read.values == {"value": [None, 10, None]}


def test_request_order_and_duplicate_keys_are_kept(store: OnlineStore, kit: Kit) -> None:
    table = kit.table()
    store.write(table, kit.batch(table, [1, 2, 3], [T0 + 1, T0 + 2, T0 + 3], value=[10, 20, 30]))
    read = kit.read(store, table, [3, 1, 3, 2, 1, 9, 3])
    assert read.values["value"] == [30, 10, 30, 20, 10, None, 30]
    assert read.event_ts == [T0 + 3, T0 + 1, T0 + 3, T0 + 2, T0 + 1, None, T0 + 3]


def test_many_keys_in_one_read(store: OnlineStore, kit: Kit) -> None:
    table = kit.table()
    store.write(table, kit.batch(table, list(range(0, 3000, 2)), T0, value=list(range(0, 3000, 2))))
    wanted = [random.Random(1).randrange(3000) for _ in range(2500)]
    read = kit.read(store, table, wanted)
    assert read.values["value"] == [k if k % 2 == 0 else None for k in wanted]


def test_several_views_in_one_read(store: OnlineStore, kit: Kit) -> None:
    users = kit.table("users", {"age": Int32})
    merchants = kit.table("merchants", {"category": String}, keys=[("merchant_id", Int64)])
    store.write(users, kit.batch(users, [1, 2], T0, age=[30, 40]))
    store.write(merchants, kit.batch(merchants, [1, 7], T0 + 5, category=["food", "fuel"]))
    results = store.read([
        kit.request(merchants, [7, 1, 2]),
        kit.request(users, [2]),
        kit.request(users, [1, 3]),
    ])
    assert [r.values for r in results] == [
        {"category": ["fuel", "food", None]},
        {"age": [40]},
        {"age": [30, None]},
    ]
    assert results[0].event_ts == [T0 + 5, T0 + 5, None]


def test_reading_a_subset_of_features_in_any_order(store: OnlineStore, kit: Kit) -> None:
    table = kit.table(features={"a": Int64, "b": String, "c": Float64})
    store.write(table, kit.batch(table, [1], T0, a=[1], b=["x"], c=[2.5]))
    assert kit.read(store, table, [1], ["c", "a"]).values == {"c": [2.5], "a": [1]}
    assert kit.read(store, table, [1], ["b"]).values == {"b": ["x"]}


def test_empty_batch_and_empty_read(store: OnlineStore, kit: Kit) -> None:
    table = kit.table()
    result = store.write(table, kit.batch(table, [], T0, value=[]))
    assert (result.rows, result.superseded) == (0, 0)
    [read] = store.read([ViewRead(table, [], ["value"])])
    assert read.event_ts == [] and read.values == {"value": []}


def test_older_event_never_overwrites_newer(store: OnlineStore, kit: Kit) -> None:
    table = kit.table()
    store.write(table, kit.batch(table, [1, 2], T0 + 100, value=[1, 2]))
    result = store.write(table, kit.batch(table, [1, 2], [T0 + 50, T0 + 150], value=[-1, 20]))
    assert result.rows == 2 and result.superseded == 1
    read = kit.read(store, table, [1, 2])
    assert read.values["value"] == [1, 20]
    assert read.event_ts == [T0 + 100, T0 + 150]


def test_within_one_batch_only_the_newest_row_per_key_counts(store: OnlineStore, kit: Kit) -> None:
    table = kit.table()
    batch = kit.batch(
        table,
        [1, 1, 2, 2, 3, 1],
        [T0 + 9, T0 + 1, T0 + 1, T0 + 9, T0, T0 + 5],
        value=[19, 11, 21, 29, 30, 15],
    )
    result = store.write(table, batch)
    assert result.rows == 6 and result.superseded == 3
    read = kit.read(store, table, [1, 2, 3])
    assert read.values["value"] == [19, 29, 30]
    assert read.event_ts == [T0 + 9, T0 + 9, T0]


def test_equal_event_times_are_broken_by_created_ts(store: OnlineStore, kit: Kit) -> None:
    table = kit.table()
    store.write(table, kit.batch(table, [1], T0, created_ts=5, value=[1]))
    older = store.write(table, kit.batch(table, [1], T0, created_ts=3, value=[2]))
    assert older.superseded == 1
    assert kit.read(store, table, [1]).values["value"] == [1]
    newer = store.write(table, kit.batch(table, [1], T0, created_ts=9, value=[3]))
    assert newer.superseded == 0
    assert kit.read(store, table, [1]).values["value"] == [3]
    # Within one batch too, in either order.
    store.write(table, kit.batch(table, [2, 2, 3, 3], T0, [7, 4, 4, 7], value=[27, 24, 34, 37]))
    assert kit.read(store, table, [2, 3]).values["value"] == [27, 37]


def test_rewriting_the_same_batch_changes_nothing(store: OnlineStore, kit: Kit) -> None:
    table = kit.table(features={"value": Int64, "label": String})
    batch = kit.batch(
        table, [1, 2, 2, 3], [T0 + 1, T0 + 2, T0 + 1, T0 + 3], [1, 2, 3, 4],
        value=[1, 2, 99, 3], label=["a", None, "z", "c"],
    )
    first = store.write(table, batch)
    before = kit.read(store, table, [1, 2, 3])
    second = store.write(table, batch)
    after = kit.read(store, table, [1, 2, 3])
    assert after == before
    assert after.values == {"value": [1, 2, 3], "label": ["a", None, "c"]}
    # The in-batch loser is superseded both times; equal (event, created) rows
    # are re-applied with identical values, which is not superseding.
    assert (first.rows, first.superseded) == (4, 1)
    assert (second.rows, second.superseded) == (4, 1)


def test_a_write_replaces_the_whole_row(store: OnlineStore, kit: Kit) -> None:
    """Features missing from a batch are null in the new row, not the older row's values."""
    table = kit.table(features={"a": Int64, "b": String})
    store.write(table, kit.batch(table, [1], T0, a=[1], b=["old"]))
    store.write(table, kit.batch(table, [1], T0 + 1, a=[2]))
    read = kit.read(store, table, [1])
    assert read.values == {"a": [2], "b": [None]}
    assert read.event_ts == [T0 + 1]


def test_delete(store: OnlineStore, kit: Kit) -> None:
    table = kit.table()
    store.write(table, kit.batch(table, [1, 2, 3], T0, value=[1, 2, 3]))
    assert store.delete(table, kit.keys(table, [1, 2, 404, 1])) == 2
    read = kit.read(store, table, [1, 2, 3])
    assert read.values["value"] == [None, None, 3]
    assert read.event_ts == [None, None, T0]
    assert store.delete(table, kit.keys(table, [1, 2])) == 0
    assert store.delete(table, []) == 0
    # A deleted key can be written again, even with an older event.
    store.write(table, kit.batch(table, [1], T0 - 10, value=[7]))
    assert kit.read(store, table, [1]).values["value"] == [7]


def test_deleting_from_a_view_never_written(store: OnlineStore, kit: Kit) -> None:
    table = kit.table("never_written")
    assert store.delete(table, kit.keys(table, [1, 2])) == 0


def test_a_view_not_written_yet_reads_as_not_found(store: OnlineStore, kit: Kit) -> None:
    table = kit.table("never_written", {"a": Int64, "b": Bool})
    read = kit.read(store, table, [1, 2])
    assert read.event_ts == [None, None]
    assert read.values == {"a": [None, None], "b": [None, None]}


def test_views_of_the_same_name_in_other_projects_are_separate(store: OnlineStore, kit: Kit) -> None:
    table = kit.table()
    other = kit.for_project(kit.project + "x").table()
    store.write(table, kit.batch(table, [1], T0, value=[1]))
    assert kit.read(store, other, [1]).event_ts == [None]


def test_multi_key_entities(store: OnlineStore, kit: Kit) -> None:
    table = kit.table(keys=[("user_id", Int64), ("country", String)])
    entities = [(1, "US"), (1, "GB"), (2, "US")]
    store.write(table, kit.batch(table, entities, T0, value=[10, 11, 20]))
    read = kit.read(store, table, [(2, "US"), (1, "GB"), (2, "GB"), (1, "US")])
    assert read.values["value"] == [20, 11, None, 10]


def test_a_feature_added_later_gets_a_new_bin(store: OnlineStore, kit: Kit) -> None:
    old = kit.table(features={"a": Int64}, bins={"a": "f0"})
    store.write(old, kit.batch(old, [1, 2], T0, a=[1, 2]))
    new = kit.table(features={"a": Int64, "b": String}, bins={"a": "f0", "b": "f1"})
    # Before anything is written with the new layout, old rows read null for it.
    read = kit.read(store, new, [1, 2, 3])
    assert read.values == {"a": [1, 2, None], "b": [None, None, None]}
    assert read.event_ts == [T0, T0, None]
    store.write(new, kit.batch(new, [2, 3], T0 + 1, a=[20, 30], b=["x", "y"]))
    read = kit.read(store, new, [1, 2, 3])
    assert read.values == {"a": [1, 20, 30], "b": [None, "x", "y"]}
    # Readers still on the old layout see what they know.
    assert kit.read(store, old, [1, 2]).values == {"a": [1, 20]}


def test_concurrent_old_and_new_writes_end_with_the_newest(store: OnlineStore, kit: Kit) -> None:
    table = kit.table(features={"value": String})
    keys = list(range(200))
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(event_ts: int, label: str) -> None:
        try:
            start.wait()
            for _ in range(5):
                for i in range(0, len(keys), 20):
                    chunk = keys[i : i + 20]
                    store.write(table, kit.batch(table, chunk, event_ts, value=[label] * len(chunk)))
        except BaseException as exc:  # surfaced below; a thread cannot fail the test
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(T0, "old")),
        threading.Thread(target=writer, args=(T0 + 1, "new")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    read = kit.read(store, table, keys)
    assert read.values["value"] == ["new"] * len(keys)
    assert read.event_ts == [T0 + 1] * len(keys)


def test_reads_from_many_threads(store: OnlineStore, kit: Kit) -> None:
    users = kit.table("users", {"age": Int32, "vip": Bool})
    store.write(users, kit.batch(users, list(range(100)), T0, age=list(range(100)),
                                 vip=[k % 3 == 0 for k in range(100)]))
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(50):
                wanted = [rng.randrange(150) for _ in range(rng.randrange(1, 20))]
                read = kit.read(store, users, wanted)
                assert read.values["age"] == [k if k < 100 else None for k in wanted]
                assert read.values["vip"] == [k % 3 == 0 if k < 100 else None for k in wanted]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
