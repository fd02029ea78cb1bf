"""quiver backfill on the Spark engine writes the same history as the local engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_backfill import D0, DAY, write_repo, write_transactions

from quiver import OnlineClient, TrainingClient
from quiver_flight.server import create_flight_server
from quiver_server.backfill import backfill
from quiver_server.config import OfflineStoreConfig, SparkConfig
from quiver_server.governance.erasure import Eraser
from quiver_server.governance.paths import GovernancePaths
from quiver_server.registry.store import RegistryStore
from quiver_server.repo import apply
from quiver_server.serving.server import create_server

# A first Spark test also starts the JVM of the run's one session.
pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]


def test_spark_and_local_backfills_write_the_same_history(spark: Any, tmp_path: Path) -> None:
    histories = {}
    for engine in ("local", "spark"):
        config = write_repo(tmp_path / engine)
        raw = write_transactions(config)
        # Ties: more rows of user 1 at a time it has a row already, in a file of their own.
        tied = raw.filter(pc.equal(raw["user_id"], 1)).slice(4, 1)
        ties = pa.concat_tables([tied] * 3).set_column(
            2, "amount", pa.array([4.0, 1.0, 3.0])).set_column(3, "city", pa.array(["x", None, "y"]))
        pq.write_table(ties, Path(config.offline_root) / "raw" / "transactions" / "ties.parquet")
        apply(config)
        # Erased before the backfill: the raw data still holds user 2, the output must not.
        Eraser(GovernancePaths.of(config), RegistryStore(config.registry_path).latest(), None,
               "local:test").erase({"user_id": [2]}, ["user_spend"])
        for view in ("user_spend", "user_daily"):
            result = backfill(config, view, D0 + DAY, D0 + 3 * DAY, engine=engine)
            assert result.rows > 0 and result.version == 1
            path = RegistryStore(config.registry_path).latest().feature_view(view).source.path
            histories[engine, view] = pq.read_table(Path(config.offline_root) / path)
        assert backfill(config, "user_spend", D0 + DAY, D0 + 2 * DAY, engine=engine).windows == []
    assert 2 not in histories["spark", "user_spend"]["user_id"].to_pylist()
    assert 2 in histories["spark", "user_daily"]["user_id"].to_pylist()
    for view in ("user_spend", "user_daily"):
        local, spark_rows = histories["local", view], histories["spark", view]
        assert spark_rows.schema == local.schema
        if view == "user_spend":  # SQL: ordered by time and keys on both engines
            assert spark_rows.equals(local)
        else:  # a function keeps its input's order, which Spark partitions
            key = sorted(local.column_names)
            assert sorted(spark_rows.select(key).to_pylist(), key=str) == sorted(
                local.select(key).to_pylist(), key=str
            )


def test_a_view_backfilled_on_spark_serves_online_and_offline(spark: Any, tmp_path: Path) -> None:
    """Real servers: gRPC reads the backfilled version's online rows, Flight (on the Spark
    engine) joins its history."""
    config = write_repo(tmp_path / "repo")
    now = datetime.now(UTC).replace(microsecond=0)
    users = (1, 2, 3)
    raw = pa.table({
        "user_id": pa.array([u for _ in range(3) for u in users], pa.int64()),
        "ts": pa.array([now - timedelta(hours=h, minutes=u) for h in (30, 20, 10) for u in users],
                       pa.timestamp("us", tz="UTC")),
        "amount": pa.array([float(h + u) for h in (30, 20, 10) for u in users]),
        "city": pa.array([f"c{u}{h}" for h in (30, 20, 10) for u in users]),
    })
    (Path(config.offline_root) / "raw" / "transactions").mkdir(parents=True)
    pq.write_table(raw, Path(config.offline_root) / "raw" / "transactions" / "all.parquet")
    apply(config)
    result = backfill(config, "user_spend", now - 2 * DAY, now, engine="spark")
    assert result.rows == 9 and result.materialized is not None
    spark_config = config.model_copy(update={"offline_store": OfflineStoreConfig(
        root=config.offline_store.root, engine="spark", spark=SparkConfig(master="local[2]"),
    )})
    serving, port = create_server(spark_config, "127.0.0.1", 0)
    flight_server, flight_port = create_flight_server(spark_config)
    try:
        with OnlineClient(f"127.0.0.1:{port}") as online:
            answer = online.get_online_features(
                entities={"user_id": [1, 2, 3, 4]}, features=["user_spend:amount_x", "user_spend:city"]
            )
        # The latest row per user (10 hours ago): amount (10 + u) times the factor 2.
        assert answer.values("amount_x") == [22.0, 24.0, 26.0, None]
        assert answer.values("city") == ["C110", "C210", "C310", None]
        spine = pa.table({
            "user_id": pa.array([1, 2, 3, 1], pa.int64()),
            "event_timestamp": pa.array([now - timedelta(hours=25), now - timedelta(hours=15),
                                         now, now - timedelta(hours=40)],
                                        pa.timestamp("us", tz="UTC")),
        })
        with TrainingClient(f"grpc://127.0.0.1:{flight_port}") as training:
            table = training.get_training_set(spine, features=["user_spend:amount_x",
                                                               "user_spend:city"])
        assert table["amount_x"].to_pylist() == [62.0, 44.0, 26.0, None]
        assert table["city"].to_pylist() == ["C130", "C220", "C310", None]
    finally:
        serving.stop(0)
        flight_server.shutdown()


def test_history_spark_wrote_and_an_erasure_rewrote_is_read_by_spark(spark: Any, tmp_path: Path) -> None:
    """Spark writes a checksum file beside each Parquet file on a local disk; one left beside
    a file an erasure rewrote would make every later Spark read of it fail."""
    config = write_repo(tmp_path / "repo")
    write_transactions(config)
    apply(config)
    backfill(config, "user_spend", D0, D0 + 2 * DAY, engine="spark")
    registry = RegistryStore(config.registry_path)
    Eraser(GovernancePaths.of(config), registry.latest(), None, "local:test").erase({"user_id": [1]})
    path = Path(config.offline_root) / registry.latest().feature_view("user_spend").source.path
    frame = spark.read.option("recursiveFileLookup", "true").parquet(str(path))
    users = {row["user_id"] for row in frame.select("user_id").collect()}
    assert users == {2, 3}
