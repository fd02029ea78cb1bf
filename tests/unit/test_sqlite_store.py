"""What only the SQLite store does; the shared behaviour is in tests/contract."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiver import Entity, FeatureView, Field, Int64, ParquetSource, String
from quiver.errors import InvalidArgumentError, UnavailableError
from quiver_server.config import QuiverConfig
from quiver_server.online.base import ViewRead, ViewTable, WriteBatch
from quiver_server.online.factory import open_online_store
from quiver_server.online.keys import encode_keys
from quiver_server.online.sqlite import SqliteOnlineStore

T0 = 1_714_521_600_000_000
USER = Entity(name="user", join_keys=(Field("user_id", Int64),))


def table(project: str = "p", name: str = "stats") -> ViewTable:
    view = FeatureView(
        name=name,
        entities=[USER],
        schema=[Field("value", Int64), Field("label", String)],
        source=ParquetSource(path=name),
    )
    return ViewTable(project, view, {"value": "f0", "label": "f1"})


def keys(*ids: int) -> list[bytes]:
    return encode_keys(USER.join_keys, [list(ids)])


def batch(ids: list[int], values: list[int], event_ts: int = T0) -> WriteBatch:
    return WriteBatch(keys(*ids), [event_ts] * len(ids), [0] * len(ids), {"value": values})


def read_values(store: SqliteOnlineStore, t: ViewTable, ids: list[int]) -> list[object]:
    [result] = store.read([ViewRead(t, keys(*ids), ["value"])])
    return result.values["value"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteOnlineStore]:
    with SqliteOnlineStore(str(tmp_path / "online.db")) as s:
        yield s


def test_the_file_is_created_in_wal_mode_with_its_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "online.db"
    with SqliteOnlineStore(str(path)) as store:
        store.write(table(), batch([1], [1]))
        assert path.is_file()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        assert tables == {"fv:p:stats"}
        sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'fv:p:stats'").fetchone()[0]
        assert "WITHOUT ROWID" in sql
    finally:
        conn.close()


@pytest.mark.parametrize("where", ["parent_is_a_file", "path_is_a_directory"])
def test_an_unusable_path_is_unavailable_naming_the_path(tmp_path: Path, where: str) -> None:
    if where == "parent_is_a_file":
        (tmp_path / "file").write_text("not a directory")
        path = tmp_path / "file" / "online.db"
    else:
        path = tmp_path
    with pytest.raises(UnavailableError, match=str(path)):
        SqliteOnlineStore(str(path))


def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "online.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UnavailableError, match="not a database"):
        SqliteOnlineStore(str(path))


def test_in_memory_databases_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="online_store.path"):
        SqliteOnlineStore(":memory:")


def test_projects_have_their_own_tables(store: SqliteOnlineStore) -> None:
    # Names that a plain "project_view" scheme would map to the same table, and
    # a project with SQLite's reserved table prefix.
    first, second, reserved = table("a_", "b"), table("a", "_b"), table("sqlite_demo", "b")
    store.write(first, batch([1], [1]))
    store.write(second, batch([1], [2]))
    store.write(reserved, batch([1], [3]))
    assert read_values(store, first, [1]) == [1]
    assert read_values(store, second, [1]) == [2]
    assert read_values(store, reserved, [1]) == [3]


def test_reads_and_deletes_past_the_variable_limit_are_chunked(store: SqliteOnlineStore) -> None:
    store._max_in = 4  # as if SQLite allowed only 4 variables per statement
    t = table()
    store.write(t, batch(list(range(20)), list(range(20))))
    wanted = [3, 19, 25, 3, 0, 7, 7, 11, 30, 2, 19]
    assert read_values(store, t, wanted) == [k if k < 20 else None for k in wanted]
    assert store.delete(t, keys(*range(0, 30, 2))) == 10
    assert read_values(store, t, [0, 1, 2, 3]) == [None, 1, None, 3]


def test_a_second_store_on_the_same_file_sees_new_columns(tmp_path: Path) -> None:
    """Serving and `quiver materialize` are different processes sharing the file."""
    path = str(tmp_path / "online.db")
    old = table()
    grown = ViewTable(
        "p",
        FeatureView(
            name="stats", entities=[USER], source=ParquetSource(path="stats"),
            schema=[Field("value", Int64), Field("label", String), Field("extra", Int64)],
        ),
        {"value": "f0", "label": "f1", "extra": "f2"},
    )
    with SqliteOnlineStore(path) as reader, SqliteOnlineStore(path) as writer:
        writer.write(old, batch([1], [1]))
        [before] = reader.read([ViewRead(grown, keys(1), ["extra", "value"])])
        assert before.values == {"extra": [None], "value": [1]}
        writer.write(grown, WriteBatch(keys(1), [T0 + 1], [0], {"value": [2], "extra": [5]}))
        [after] = reader.read([ViewRead(grown, keys(1), ["extra", "value"])])
        assert after.values == {"extra": [5], "value": [2]}


def test_a_locked_file_is_unavailable_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "online.db"
    with SqliteOnlineStore(str(path), busy_timeout=0.05) as store:
        store.write(table(), batch([1], [1]))
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(UnavailableError, match="database is locked"):
                store.write(table(), batch([2], [2]))
            # Reads go on under WAL while another connection holds the write lock.
            assert read_values(store, table(), [1]) == [1]
        finally:
            blocker.close()
        store.write(table(), batch([2], [2]))
        assert read_values(store, table(), [1, 2]) == [1, 2]


def test_bad_batches_are_invalid_arguments(store: SqliteOnlineStore) -> None:
    t = table()
    with pytest.raises(InvalidArgumentError, match="no feature 'nope'"):
        store.write(t, WriteBatch(keys(1), [T0], [0], {"nope": [1]}))
    with pytest.raises(InvalidArgumentError, match="event_ts"):
        store.write(t, WriteBatch(keys(1, 2), [T0], [0, 0], {"value": [1, 2]}))
    with pytest.raises(InvalidArgumentError, match="must not be null"):
        store.write(t, WriteBatch(keys(1), [None], [0], {"value": [1]}))  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match="bad value"):
        store.write(t, WriteBatch(keys(1), [T0], [0], {"value": [2**64]}))
    # Nothing of a failed batch was kept.
    assert read_values(store, t, [1]) == [None]


def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SqliteOnlineStore(str(tmp_path / "online.db"))
    assert store.healthy()
    store.close()
    assert not store.healthy()
    with pytest.raises(UnavailableError, match="closed"):
        read_values(store, table(), [1])


def test_the_factory_opens_the_configured_sqlite_file(tmp_path: Path) -> None:
    config = QuiverConfig(project="p", repo_path=tmp_path)
    store = open_online_store(config)
    try:
        assert isinstance(store, SqliteOnlineStore)
        assert Path(store.path) == tmp_path / "data" / "online.db"
        assert store.healthy()
    finally:
        store.close()


def test_deleted_values_leave_no_bytes_in_the_files(tmp_path: Path) -> None:
    """A delete is a privacy erasure: the entity's values, current and overwritten,
    are gone from the database file and its write-ahead log, not left in free space."""
    t = table()
    others = list(range(100, 400))
    with SqliteOnlineStore(str(tmp_path / "online.db")) as s:
        s.write(t, WriteBatch(keys(*others), [T0] * len(others), [0] * len(others),
                              {"value": others, "label": [f"other-{i}" for i in others]}))
        s.write(t, WriteBatch(keys(42), [T0], [0], {"value": [1], "label": ["erase-me-first"]}))
        s.write(t, WriteBatch(keys(42), [T0 + 1], [0], {"value": [2], "label": ["erase-me-second"]}))
        assert s.delete(t, keys(42)) == 1
        assert read_values(s, t, [42, 100]) == [None, 100]

        def stored() -> bytes:
            return b"".join(p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.is_file())

        assert b"other-100" in stored()
        assert b"erase-me" not in stored()
    assert b"erase-me" not in stored()
