"""Materialization on the Spark engine: the same latest rows as the local engine, written by executors."""

from __future__ import annotations

import os
import random
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_materialize import USER, T, micros, stats_view, write_parquet

from quiver import Entity, FeatureView, Field, Float32, Int32, ParquetSource, String, Timestamp
from quiver.errors import FailedPreconditionError
from quiver_server import materialize as local
from quiver_server.config import (
    AerospikeOnlineStoreConfig,
    OfflineStoreConfig,
    QuiverConfig,
    SparkConfig,
)
from quiver_server.governance.erasure import ErasureRequest, PendingErasures
from quiver_server.governance.paths import GovernancePaths
from quiver_server.materialize import materialize_range
from quiver_server.monitoring.profile import ViewProfile
from quiver_server.monitoring.sinks import ProfileWriter, newest_event
from quiver_server.monitoring.storage import ProfileStore
from quiver_server.online.base import ViewRead, WriteBatch
from quiver_server.online.keys import encode_keys
from quiver_server.registry.store import RegistryStore

# A first Spark test also starts the JVM of the run's one session.
pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]

AEROSPIKE = os.environ.get("QUIVER_TEST_AEROSPIKE", "")
SPARK = OfflineStoreConfig(engine="spark", spark=SparkConfig(master="local[2]", write_partitions=3))

account = Entity(name="account", join_keys=(Field("bank", String), Field("number", Int32)))
accounts = FeatureView(
    name="accounts", entities=[account],
    schema=[Field("rate", Float32), Field("opened", Timestamp), Field("label", String)],
    source=ParquetSource(path="accounts", created_timestamp_field="created"),
)


def write_accounts(config: QuiverConfig, n: int = 300, seed: int = 5) -> None:
    """Tie-heavy history in two files: equal event times, equal and null created times."""
    rng = random.Random(seed)
    for part in range(2):
        write_parquet(config, f"accounts/part-{part}.parquet", pa.table({
            "bank": pa.array([rng.choice(["x", "y"]) for _ in range(n)]).dictionary_encode(),
            "number": pa.array([rng.randrange(6) for _ in range(n)], pa.int64()),
            "event_timestamp": pa.array(
                [micros(T) * 1000 + rng.randrange(8) * 10**9 + rng.choice([0, 400]) for _ in range(n)],
                pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
            "created": pa.array([rng.choice([None, micros(T), micros(T) + 1]) for _ in range(n)],
                                pa.timestamp("us")),
            "rate": pa.array([rng.choice([0.1, 2.5, None]) for _ in range(n)], pa.float64()),
            "opened": pa.array([micros(T) - rng.randrange(10**9) for _ in range(n)],
                               pa.timestamp("us", tz="UTC")),
            "label": [f"r{i}" for i in range(n)],
        }))


def local_latest(config: QuiverConfig, view: str) -> pa.Table:
    """What the local engine would write: its own plan and reduction."""
    table = RegistryStore(config.registry_path).latest().view_table(view)
    job = local._plan(config, table, T - timedelta(days=1), T + timedelta(days=1))
    assert job.dataset is not None
    # Pending erasures, as the local run applies them.
    erasing = PendingErasures(GovernancePaths.of(config)).filter_for(table.view)
    condition = job.filter if erasing is None else job.filter & erasing
    scanned = job.dataset.to_table(columns=job.projection, filter=condition)
    return local._latest_per_key(scanned, job)


def test_spark_keeps_the_same_latest_row_per_entity(
    spark: Any, tmp_path: Path, make_registry: Any
) -> None:
    from quiver_server.spark.materialize import latest_rows
    from quiver_server.spark.session import spark_session

    config = QuiverConfig(project="shop", repo_path=tmp_path)
    make_registry(config, [account], [accounts])
    write_accounts(config)
    want = local_latest(config, "accounts")
    table = RegistryStore(config.registry_path).latest().view_table("accounts")
    job = local._plan(config, table, T - timedelta(days=1), T + timedelta(days=1))
    got = latest_rows(spark_session(SPARK.spark), config, job).toArrow()
    order = [("bank", "ascending"), ("number", "ascending")]
    got = got.take(pc.sort_indices(got, sort_keys=order))
    assert int(pc.sum(got["__rows"]).as_py()) == 600
    for name in want.column_names:
        assert got[name].to_pylist() == want[name].to_pylist(), name

    # An erasure requested and not yet carried out: neither engine writes the entity back.
    pending = GovernancePaths.of(config).erasures_pending
    pending.mkdir(parents=True, exist_ok=True)
    request = ErasureRequest("e-1", "2024-05-01T00:00:00+00:00", "test", ("accounts",),
                             {"bank": ["x"], "number": [3]})
    (pending / "e-1.json").write_bytes(request.to_json())
    want = local_latest(config, "accounts")
    job = local._plan(config, table, T - timedelta(days=1), T + timedelta(days=1))
    got = latest_rows(spark_session(SPARK.spark), config, job).toArrow()
    got = got.take(pc.sort_indices(got, sort_keys=order))
    assert ("x", 3) not in set(zip(got["bank"].to_pylist(), got["number"].to_pylist(), strict=True))
    assert got.num_rows == want.num_rows == 11
    for name in want.column_names:
        assert got[name].to_pylist() == want[name].to_pylist(), name


def test_the_sqlite_store_is_written_by_the_local_engine_only(
    spark: Any, tmp_path: Path, make_registry: Any
) -> None:
    config = QuiverConfig(project="shop", repo_path=tmp_path, offline_store=SPARK)
    make_registry(config, [USER], [stats_view()])
    with pytest.raises(FailedPreconditionError, match="--engine local") as info:
        materialize_range(config, T, T + timedelta(days=1))
    assert info.value.reason == "ENGINE_STORE_UNSUPPORTED"
    assert "sqlite" in info.value.message


@pytest.mark.aerospike
@pytest.mark.skipif(not AEROSPIKE, reason="set QUIVER_TEST_AEROSPIKE=host:port to run against a real Aerospike")
def test_executors_write_aerospike_under_the_monotonic_rule(
    spark: Any, tmp_path: Path, make_registry: Any
) -> None:
    from quiver_server.online.aerospike import AerospikeOnlineStore

    store_config = AerospikeOnlineStoreConfig(
        hosts=[h.strip() for h in AEROSPIKE.split(",") if h.strip()],
        namespace=os.environ.get("QUIVER_TEST_AEROSPIKE_NAMESPACE", "quiver"),
    )
    config = QuiverConfig(project=f"t{uuid.uuid4().hex[:12]}", repo_path=tmp_path,
                          offline_store=SPARK, online_store=store_config)
    make_registry(config, [account], [accounts])
    write_accounts(config)
    want = local_latest(config, "accounts")
    table = RegistryStore(config.registry_path).latest().view_table("accounts")
    keys = encode_keys(account.join_keys, [want["bank"].to_pylist(), want["number"].to_pylist()])
    # A newer row already online for the first entity: it must survive.
    newer = micros(T + timedelta(days=2))
    with AerospikeOnlineStore(store_config) as store:
        store.write(table, WriteBatch(keys[:1], [newer], [0],
                                      {"rate": [9.0], "opened": [None], "label": ["pushed"]}))
    # Monitoring on: executors profile their partitions, the driver merges and stores them.
    store = ProfileStore(str(tmp_path / "profiles"))
    [first] = materialize_range(config, T - timedelta(days=1), T + timedelta(days=1),
                                profiles=ProfileWriter(store))
    assert (first.rows_read, first.entities) == (600, want.num_rows)
    types = {f.name: f.dtype for f in accounts.schema}
    [profile] = store.scan("accounts", ("materialize",), types).profiles
    # The local engine profiles the same latest rows.
    expected = ViewProfile.for_view(accounts, "materialize", T - timedelta(days=1),
                                    T + timedelta(days=1))
    expected.observe(want)
    expected.note_event_time(newest_event(want.column(local.EVENT_TS)))
    assert (profile.rows, profile.window_start, profile.window_end, profile.newest_event) == (
        expected.rows, expected.window_start, expected.window_end, expected.newest_event)
    for name, summary in expected.features.items():
        got = profile.features[name]
        assert (got.count, got.null_count, got.numeric_count) == (
            summary.count, summary.null_count, summary.numeric_count), name
        if summary.numeric_count:
            assert (got.minimum, got.maximum) == (summary.minimum, summary.maximum), name
            assert got.mean == pytest.approx(summary.mean), name
    assert (first.rows_written, first.superseded) == (want.num_rows - 1, 1)
    [again] = materialize_range(config, T - timedelta(days=1), T + timedelta(days=1))
    assert again.entities == want.num_rows
    with AerospikeOnlineStore(store_config) as store:
        [read] = store.read([ViewRead(table, keys, ["rate", "opened", "label"])])
    assert read.event_ts == [newer, *want[local.EVENT_TS].to_pylist()[1:]]
    assert read.values["label"] == ["pushed", *want["label"].to_pylist()[1:]]
    assert read.values["opened"][1:] == want["opened"].to_pylist()[1:]
    assert read.values["rate"][1:] == pytest.approx(want["rate"].to_pylist()[1:])
