"""Fixtures for the online store contract: every store runs the same tests.

`store` is parametrized over the store implementations: SQLite always, Aerospike
when ``QUIVER_TEST_AEROSPIKE=host:port[,host:port]`` points at a real server
(namespace from ``QUIVER_TEST_AEROSPIKE_NAMESPACE``, default ``quiver``). Each
test gets its own project, so tests never see each other's rows.

`kit` builds the objects the tests write and read (views, tables, keys, batches).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from quiver import Entity, FeatureView, Field, Int64, ParquetSource, ValueType
from quiver_server.online.base import (
    OnlineStore,
    ViewRead,
    ViewReadResult,
    ViewTable,
    WriteBatch,
)
from quiver_server.online.keys import encode_keys

AEROSPIKE = os.environ.get("QUIVER_TEST_AEROSPIKE", "")


class Kit:
    """Builders for contract tests, bound to one test's project."""

    def __init__(self, project: str) -> None:
        self.project = project

    def for_project(self, project: str) -> Kit:
        return Kit(project)

    def table(
        self,
        name: str = "stats",
        features: Mapping[str, ValueType] | None = None,
        keys: Sequence[tuple[str, ValueType]] = (("user_id", Int64),),
        bins: Mapping[str, str] | None = None,
    ) -> ViewTable:
        """A view of one entity with `keys` and `features`; bins default to f0, f1, ..."""
        features = dict(features or {"value": Int64})
        entity = Entity(name=f"{name}_entity", join_keys=tuple(Field(k, t) for k, t in keys))
        view = FeatureView(
            name=name,
            entities=[entity],
            schema=[Field(f, t) for f, t in features.items()],
            source=ParquetSource(path=name),
        )
        if bins is None:
            bins = {f: f"f{i}" for i, f in enumerate(features)}
        return ViewTable(self.project, view, dict(bins))

    def keys(self, table: ViewTable, entities: Sequence[Any]) -> list[bytes]:
        """Encoded keys; an entity is a scalar, or a tuple for multi-key views."""
        rows = [e if isinstance(e, tuple) else (e,) for e in entities]
        width = len(table.view.join_keys)
        columns = [[row[i] for row in rows] for i in range(width)]
        return encode_keys(table.view.join_keys, columns)

    def batch(
        self,
        table: ViewTable,
        entities: Sequence[Any],
        event_ts: Sequence[int] | int,
        created_ts: Sequence[int] | int = 0,
        **features: Sequence[Any],
    ) -> WriteBatch:
        """A batch; a single `event_ts` / `created_ts` applies to every row."""
        n = len(entities)
        events = [event_ts] * n if isinstance(event_ts, int) else list(event_ts)
        created = [created_ts] * n if isinstance(created_ts, int) else list(created_ts)
        return WriteBatch(
            self.keys(table, entities), events, created, {f: list(v) for f, v in features.items()}
        )

    def request(
        self, table: ViewTable, entities: Sequence[Any], features: Sequence[str] | None = None
    ) -> ViewRead:
        return ViewRead(
            table,
            self.keys(table, entities),
            list(features if features is not None else table.view.feature_names),
        )

    def read(
        self,
        store: OnlineStore,
        table: ViewTable,
        entities: Sequence[Any],
        features: Sequence[str] | None = None,
    ) -> ViewReadResult:
        """Read one view and check the result's shape, which every store must get right."""
        request = self.request(table, entities, features)
        [result] = store.read([request])
        assert len(result.event_ts) == len(entities)
        assert list(result.values) == list(request.features)
        assert all(len(v) == len(entities) for v in result.values.values())
        return result


def _sqlite_store(tmp_path: Path, project: str) -> OnlineStore:
    from quiver_server.online.sqlite import SqliteOnlineStore

    return SqliteOnlineStore(str(tmp_path / "online.db"))


def _aerospike_store(tmp_path: Path, project: str) -> OnlineStore:
    # Imported only when a server is configured: the module needs the client library.
    from quiver_server.config import AerospikeOnlineStoreConfig
    from quiver_server.online.aerospike import AerospikeOnlineStore

    config = AerospikeOnlineStoreConfig(
        hosts=[h.strip() for h in AEROSPIKE.split(",") if h.strip()],
        namespace=os.environ.get("QUIVER_TEST_AEROSPIKE_NAMESPACE", "quiver"),
        # The contract is about results, not latency: the production read budget
        # (50 ms) expires on a loaded test machine with several threads reading.
        read_timeout_ms=10_000,
    )
    store: OnlineStore = AerospikeOnlineStore(config)
    return store


@pytest.fixture
def project() -> str:
    """A project name no other test (or earlier run against a shared server) uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(
    params=[
        pytest.param(_sqlite_store, id="sqlite"),
        pytest.param(
            _aerospike_store,
            id="aerospike",
            marks=[
                pytest.mark.aerospike,
                pytest.mark.skipif(
                    not AEROSPIKE,
                    reason="set QUIVER_TEST_AEROSPIKE=host:port to run against a real Aerospike",
                ),
            ],
        ),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path, project: str) -> Iterator[OnlineStore]:
    opened: OnlineStore = request.param(tmp_path, project)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def kit(project: str) -> Kit:
    return Kit(project)
