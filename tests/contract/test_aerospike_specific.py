"""What only the Aerospike store promises, checked on a real server.

Opt-in: set ``QUIVER_TEST_AEROSPIKE=host:port`` (namespace from
``QUIVER_TEST_AEROSPIKE_NAMESPACE``, default ``quiver``). Records are inspected
with the aerospike client itself, so these tests see what is really stored.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from quiver import Bool, Bytes, Entity, FeatureView, Field, Float64, Int64, ParquetSource, String
from quiver.errors import UnavailableError
from quiver_server.online.base import ViewTable

if TYPE_CHECKING:
    from conftest import Kit

AEROSPIKE = os.environ.get("QUIVER_TEST_AEROSPIKE", "")
NAMESPACE = os.environ.get("QUIVER_TEST_AEROSPIKE_NAMESPACE", "quiver")
T0 = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z in microseconds

pytestmark = [
    pytest.mark.aerospike,
    pytest.mark.skipif(
        not AEROSPIKE, reason="set QUIVER_TEST_AEROSPIKE=host:port to run against a real Aerospike"
    ),
]


def _hosts() -> list[str]:
    return [h.strip() for h in AEROSPIKE.split(",") if h.strip()]


def _open(project: str, hosts: list[str] | None = None, **settings: Any) -> Any:
    from quiver_server.config import AerospikeOnlineStoreConfig
    from quiver_server.online.aerospike import AerospikeOnlineStore

    settings.setdefault("namespace", NAMESPACE)
    # Results, not latency: the production read budget (50 ms) expires on a loaded machine.
    settings.setdefault("read_timeout_ms", 10_000)
    config = AerospikeOnlineStoreConfig(hosts=hosts or _hosts(), **settings)
    return AerospikeOnlineStore(config)


@pytest.fixture
def store(project: str) -> Iterator[Any]:
    opened = _open(project)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def raw() -> Iterator[Any]:
    """A plain aerospike client on the same cluster."""
    import aerospike

    from quiver_server.online.aerospike_policy import parse_hosts

    client = aerospike.client({"hosts": parse_hosts(_hosts(), None)})
    try:
        yield client
    finally:
        client.close()


def _key(table: ViewTable, kit: Kit, entity: Any) -> tuple[str, str, bytearray]:
    from quiver_server.online.aerospike_layout import set_name

    [key] = kit.keys(table, [entity])
    return (NAMESPACE, set_name(table.project, table.name), bytearray(key))


def _view(name: str, ttl: timedelta = timedelta(0), **features: Any) -> FeatureView:
    entity = Entity(name=f"{name}_entity", join_keys=(Field("user_id", Int64),))
    return FeatureView(
        name=name,
        entities=[entity],
        schema=[Field(f, t) for f, t in features.items()],
        source=ParquetSource(path=name),
        ttl=ttl,
    )


def test_bins_are_named_by_the_registry_and_hold_native_types(
    store: Any, raw: Any, kit: Kit
) -> None:
    table = kit.table(
        features={"amount": Float64, "label": String, "flag": Bool, "blob": Bytes, "n": Int64},
        bins={"amount": "f7", "label": "fz", "flag": "f1", "blob": "f2", "n": "f3"},
    )
    store.write(table, kit.batch(
        table, [1], T0, created_ts=5,
        amount=[2.5], label=["x"], flag=[True], blob=[b"\x00\x01"], n=[None],
    ))
    _, meta, bins = raw.get(_key(table, kit, 1))
    # The null feature has no bin; nothing else is stored.
    assert bins == {"_e": T0, "_c": 5, "f7": 2.5, "fz": "x", "f1": True, "f2": b"\x00\x01"}
    assert type(bins["f1"]) is bool
    assert meta["gen"] == 1


def test_a_new_row_replaces_the_record_so_no_stale_bin_survives(
    store: Any, raw: Any, kit: Kit
) -> None:
    table = kit.table(features={"a": Int64, "b": String})
    store.write(table, kit.batch(table, [1], T0, a=[1], b=["old"]))
    store.write(table, kit.batch(table, [1], T0 + 1, a=[2], b=[None]))
    _, _, bins = raw.get(_key(table, kit, 1))
    assert bins == {"_e": T0 + 1, "_c": 0, "f0": 2}


def test_a_long_project_and_view_get_a_shortened_set(store: Any, raw: Any, kit: Kit) -> None:
    from quiver_server.online.aerospike_layout import set_name

    long_kit = kit.for_project(kit.project + "_" + "p" * 40)
    first = long_kit.table("a_rather_long_feature_view_name_for_transactions")
    second = long_kit.table("a_rather_long_feature_view_name_for_transactions_v2")
    name = set_name(first.project, first.name)
    assert len(f"{first.project}.{first.name}") > 63
    assert len(name) == 63 and "#" in name
    # Both names share the first 42 characters; their sets still differ.
    assert set_name(second.project, second.name) != name

    store.write(first, long_kit.batch(first, [1], T0, value=[10]))
    store.write(second, long_kit.batch(second, [1], T0, value=[20]))
    assert long_kit.read(store, first, [1]).values == {"value": [10]}
    assert long_kit.read(store, second, [1]).values == {"value": [20]}
    _, _, bins = raw.get(_key(first, long_kit, 1))
    assert bins["f0"] == 10


def test_the_server_refuses_an_older_row_the_store_never_saw(
    store: Any, raw: Any, kit: Kit
) -> None:
    """The write rule is a filter on the server, not a check in this process."""
    table = kit.table()
    raw.put(_key(table, kit, 1), {"_e": T0 + 100, "_c": 0, "f0": 1})
    result = store.write(table, kit.batch(table, [1, 2], [T0 + 50, T0 + 50], value=[-1, 2]))
    assert (result.rows, result.superseded) == (2, 1)
    assert kit.read(store, table, [1, 2]).values == {"value": [1, 2]}


def test_an_old_row_written_after_a_new_one_by_another_store_is_superseded(
    store: Any, kit: Kit
) -> None:
    table = kit.table()
    other = _open(kit.project)
    try:
        assert other.write(table, kit.batch(table, [1], T0 + 10, 3, value=[2])).superseded == 0
        assert store.write(table, kit.batch(table, [1], T0 + 10, 2, value=[1])).superseded == 1
        assert store.write(table, kit.batch(table, [1], T0 + 9, 9, value=[0])).superseded == 1
    finally:
        other.close()
    read = kit.read(store, table, [1])
    assert read.values == {"value": [2]} and read.event_ts == [T0 + 10]


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@pytest.mark.parametrize("path", ["fast", "public compile"])
def test_the_server_applies_the_write_rule_with_either_filter(
    path: str, raw: Any, kit: Kit
) -> None:
    """Each way of making the filter (the fast template and its public-API fallback for an
    unverified client) makes the server apply exactly (event, created) >= stored: equal
    event times broken by created times, exact ties applied, and the int64 extremes."""
    from quiver_server.online.aerospike_expressions import WriteFilter

    store = _open(kit.project)
    try:
        store._filter = WriteFilter() if path == "fast" else WriteFilter("0.0")
        assert store._filter.fast is (path == "fast")
        table = kit.table()
        cases = []
        for stored in (None, (T0, 5), (INT64_MAX, INT64_MAX), (INT64_MIN, INT64_MIN), (0, 0)):
            event, created = stored or (T0, 5)
            for de in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if INT64_MIN <= event + de <= INT64_MAX and INT64_MIN <= created + dc <= INT64_MAX:
                        cases.append((stored, event + de, created + dc))
        for i, (stored, event, created) in enumerate(cases):
            if stored is not None:
                raw.put(_key(table, kit, i), {"_e": stored[0], "_c": stored[1], "f0": -1})
            result = store.write(table, kit.batch(table, [i], event, created, value=[i]))
            wins = stored is None or (event, created) >= stored
            assert result.superseded == (0 if wins else 1), (stored, event, created)
            _, _, bins = raw.get(_key(table, kit, i))
            expected = (event, created, i) if wins else (*stored, -1)  # type: ignore[misc]
            assert (bins["_e"], bins["_c"], bins["f0"]) == expected, (stored, event, created)
    finally:
        store.close()


def test_two_clients_racing_old_and_new_rows_end_with_the_newest(store: Any, kit: Kit) -> None:
    table = kit.table(features={"value": String})
    keys = list(range(300))
    other = _open(kit.project)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(target: Any, event_ts: int, label: str) -> None:
        try:
            start.wait()
            for _ in range(10):
                for i in range(0, len(keys), 25):
                    chunk = keys[i : i + 25]
                    batch = kit.batch(table, chunk, event_ts, value=[label] * len(chunk))
                    target.write(table, batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(store, T0 + 1, "new")),
        threading.Thread(target=writer, args=(other, T0, "old")),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    assert errors == []
    read = kit.read(store, table, keys)
    assert read.values["value"] == ["new"] * len(keys)
    assert read.event_ts == [T0 + 1] * len(keys)


def test_record_ttl_follows_the_view_ttl(store: Any, raw: Any, kit: Kit) -> None:
    import aerospike

    hourly_view = _view("hourly", timedelta(hours=1), value=Int64)
    hourly = ViewTable(kit.project, hourly_view, {"value": "f0"})
    forever = ViewTable(kit.project, _view("forever", value=Int64), {"value": "f0"})
    for table in (hourly, forever):
        store.write(table, kit.batch(table, [1], T0, value=[1]))
    _, meta, _ = raw.get(_key(hourly, kit, 1))
    assert 3600 - 60 <= meta["ttl"] <= 3600
    _, meta, _ = raw.get(_key(forever, kit, 1))
    assert meta["ttl"] == aerospike.TTL_NEVER_EXPIRE


def test_delete_removes_the_record(store: Any, raw: Any, kit: Kit) -> None:
    from aerospike import exception

    table = kit.table()
    store.write(table, kit.batch(table, [1, 2], T0, value=[1, 2]))
    assert store.delete(table, kit.keys(table, [1])) == 1
    with pytest.raises(exception.RecordNotFound):
        raw.get(_key(table, kit, 1))
    assert raw.get(_key(table, kit, 2))[2]["f0"] == 2


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_an_unreachable_cluster_is_unavailable_at_once(kit: Kit) -> None:
    down = _open(kit.project, hosts=[f"127.0.0.1:{_unused_port()}"])
    try:
        assert down.healthy() is False
        table = kit.table()
        for call in (
            lambda: down.read([kit.request(table, [1])]),
            lambda: down.write(table, kit.batch(table, [1], T0, value=[1])),
            lambda: down.delete(table, kit.keys(table, [1])),
        ):
            with pytest.raises(UnavailableError, match="ConnectionError"):
                call()
        assert down.healthy() is False
    finally:
        down.close()


def test_a_missing_namespace_is_named(kit: Kit) -> None:
    missing = _open(kit.project, namespace="no_such_namespace")
    try:
        assert missing.healthy() is False
        with pytest.raises(UnavailableError, match="'no_such_namespace' is not configured"):
            missing.read([kit.request(kit.table(), [1])])
    finally:
        missing.close()


def test_a_value_the_client_cannot_store_is_invalid_and_named(store: Any, kit: Kit) -> None:
    from quiver.errors import InvalidArgumentError

    table = kit.table(features={"a": Int64, "b": String})
    with pytest.raises(InvalidArgumentError, match="feature 'b' is string but row 1 holds object"):
        store.write(table, kit.batch(table, [1, 2], T0, a=[1, 2], b=["x", object()]))
    with pytest.raises(InvalidArgumentError, match="bad value"):
        store.write(table, kit.batch(table, [1], T0, a=[2**64], b=["x"]))
    assert kit.read(store, table, [1, 2]).event_ts == [None, None]


def test_views_read_in_part_alongside_others_get_only_their_features(
    store: Any, kit: Kit
) -> None:
    """Views whose bins cannot share one bin list are read record by record, same call."""
    wide = kit.table("wide", {"a": Int64, "b": String, "c": Float64})
    narrow = kit.table("narrow", {"x": String})
    store.write(wide, kit.batch(wide, [1, 2], T0, a=[1, 2], b=["p", "q"], c=[0.5, 1.5]))
    store.write(narrow, kit.batch(narrow, [1], T0 + 1, x=["n"]))
    results = store.read([
        kit.request(wide, [2, 1, 3], ["c"]),
        kit.request(narrow, [1, 2]),
        kit.request(wide, [1], ["b", "a"]),
    ])
    assert [r.values for r in results] == [
        {"c": [1.5, 0.5, None]},
        {"x": ["n", None]},
        {"b": ["p"], "a": [1]},
    ]
    assert results[1].event_ts == [T0 + 1, None]
