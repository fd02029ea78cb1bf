"""Training sets planned by the Spark engine, through a real Flight server."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import flight
from test_flight_server import (
    expected,
    make_spine,
    merchant,
    merchant_stats,
    model,
    user,
    user_stats,
    write_history,
)

from quiver._training_client import TrainingClient
from quiver.errors import FailedPreconditionError
from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.convert import unpack_ticket
from quiver_server.config import OfflineStoreConfig, QuiverConfig, SparkConfig

# A first Spark test also starts the JVM of the run's one session.
pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]

Server = Callable[..., AbstractContextManager[str]]


def with_engine(config: QuiverConfig, engine: str) -> QuiverConfig:
    store = OfflineStoreConfig(root=config.offline_store.root, engine=engine,  # type: ignore[arg-type]
                               spark=SparkConfig(master="local[2]"))
    return config.model_copy(update={"offline_store": store})


def test_spark_planned_training_sets_equal_the_local_engine_and_expire(
    spark: Any, tmp_path: Path, make_config: Callable[..., QuiverConfig],
    apply_objects: Callable[..., Any], flight_server: Server, fake_clock: Any,
) -> None:
    local = make_config(tmp_path, partition_rows=1000, batch_rows=256, spine_ttl_seconds=3600)
    write_history(Path(local.offline_root))
    apply_objects(local, [user, merchant], [user_stats, merchant_stats], [model])
    config = with_engine(local, "spark")
    spine = make_spine(3500)
    with (
        flight_server(config, clock=fake_clock) as on_spark,
        flight_server(local, clock=fake_clock) as on_local,
        TrainingClient(on_spark) as client,
    ):
        info = client.plan(spine, feature_service="model", partition_rows=1000)
        assert len(info.endpoints) == 4 and info.total_records == 3500
        partitions = [pb.TrainingSetPartition.FromString(unpack_ticket(e.ticket.ticket).partition)
                      for e in info.endpoints]
        assert all(p.staged_path.startswith("_staging/training/") for p in partitions)
        want = expected(local, spine)
        assert client.fetch(info).equals(want)
        # A replica on the local engine serves the staged partitions as they are.
        raw = flight.connect(on_local)
        served = pa.concat_tables(raw.do_get(e.ticket).read_all() for e in info.endpoints)
        assert served.equals(want)
        # Full feature names, small batches, an offline spine: the same rows as locally.
        pq.write_table(spine, Path(local.offline_root) / "labels.parquet")
        from quiver._training_client import OfflineSpine

        named = client.get_training_set(OfflineSpine("labels.parquet"), feature_service="model",
                                        full_feature_names=True)
        assert named.equals(expected(local, spine, full_feature_names=True))
        # Staged rows expire with the spine: the ticket goes stale, the files are swept.
        fake_clock.now += 3601
        with pytest.raises(flight.FlightServerError, match="stale"):
            raw.do_get(info.endpoints[0].ticket).read_all()
        raw.close()
        with TrainingClient(on_spark) as again:
            again.get_training_set(make_spine(10, seed=9), feature_service="model")
        staged = Path(local.offline_root) / partitions[0].staged_path
        assert not staged.exists()


def test_history_changed_after_planning_makes_spark_tickets_stale(
    spark: Any, tmp_path: Path, make_config: Callable[..., QuiverConfig],
    apply_objects: Callable[..., Any], flight_server: Server,
) -> None:
    config = with_engine(make_config(tmp_path), "spark")
    write_history(Path(config.offline_root))
    apply_objects(config, [user, merchant], [user_stats, merchant_stats], [model])
    with flight_server(config) as location, TrainingClient(location) as client:
        info = client.plan(make_spine(50), feature_service="model")
        pq.write_table(pq.read_table(Path(config.offline_root) / "merchant_stats" / "data.parquet"),
                       Path(config.offline_root) / "merchant_stats" / "more.parquet")
        with pytest.raises(FailedPreconditionError, match="merchant_stats"):
            client.fetch(info)
