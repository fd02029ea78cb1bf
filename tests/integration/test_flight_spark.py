"""Training sets planned by the Spark engine, through a real Flight server."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
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
from transform_repo import write_history as write_transform_history
from transform_repo import write_repo

from quiver import TrainingClient
from quiver.errors import FailedPreconditionError
from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.convert import unpack_ticket
from quiver_flight.server import create_flight_server
from quiver_server.config import OfflineStoreConfig, QuiverConfig, SparkConfig, load_config
from quiver_server.governance.erasure import ErasureRequest
from quiver_server.governance.paths import GovernancePaths
from quiver_server.repo import apply

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
        (Path(local.offline_root) / "spines").mkdir()
        pq.write_table(spine, Path(local.offline_root) / "spines" / "labels.parquet")
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


def _transform_history(now: datetime) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Several rows per user (older, newer, not yet created, past the ttl) and nulls."""
    nums: list[dict[str, object]] = []
    ages: list[dict[str, object]] = []
    for u in range(1, 13):
        for age_hours, created_after in ((60, 0), (5, 0), (1, 0), (2, 3)):
            event = now - timedelta(hours=age_hours)
            value = None if (u + age_hours) % 5 == 0 else float(u * 3 + age_hours) * 0.5
            nums.append({
                "user_id": u, "event_timestamp": event,
                "created": event + timedelta(hours=created_after),
                "x_float": value, "x_int": None if u % 4 == 0 else u * 10 - age_hours,
                "x_f32": float(u % 5) - 1.5, "cat": None if u % 6 == 0 else "abcd"[u % 4],
                "code": u % 3, "flag": u % 2 == 0,
            })
        if u % 3:
            ages.append({"user_id": u, "event_timestamp": now - timedelta(hours=u * 2),
                         "y": float(u) / 3})
    return nums, ages


def _transform_spine(now: datetime, n: int) -> pa.Table:
    users = [1 + (i * 7) % 14 for i in range(n)]  # 13 and 14 have no history
    times = [now - timedelta(hours=(i % 5) * 3, minutes=i % 7) for i in range(n)]
    amounts = [0.5 + (i % 9) * 40.0 for i in range(n)]
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        "amount": pa.array(amounts, pa.float64()),
    })


def _same_cells(got: pa.Table, want: pa.Table) -> None:
    assert got.schema.names == want.schema.names
    for name in want.schema.names:
        assert got.schema.field(name) == want.schema.field(name), name
        assert got[name].to_pylist() == want[name].to_pylist(), name


def test_spark_training_sets_apply_on_demand_views_and_fitted_transforms_as_locally(
    spark: Any, tmp_path: Path,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    repo = write_repo(tmp_path / "repo")
    write_transform_history(repo, *_transform_history(now))
    local = load_config(repo, env={})
    apply(local)
    on_spark_config = with_engine(local, "spark")
    local_server, local_port = create_flight_server(local)
    spark_server, spark_port = create_flight_server(on_spark_config)
    fit_spine, pull_spine = _transform_spine(now, 40), _transform_spine(now - timedelta(hours=2), 57)
    try:
        with (
            TrainingClient(f"grpc://127.0.0.1:{spark_port}") as on_spark,
            TrainingClient(f"grpc://127.0.0.1:{local_port}") as on_local,
        ):
            # Fitting on each engine: the same parameters (versions 1 and 2), so the
            # same fitted training set.
            fitted_on_spark = on_spark.get_training_set(fit_spine, feature_service="everything",
                                                        fit=True, partition_rows=16)
            fitted_on_local = on_local.get_training_set(fit_spine, feature_service="everything",
                                                        fit=True)
            assert fitted_on_spark.schema.metadata[b"quiver.transform_version"] == b"1"
            assert fitted_on_local.schema.metadata[b"quiver.transform_version"] == b"2"
            _same_cells(fitted_on_spark, fitted_on_local)
            assert fitted_on_spark.num_rows == 40
            for version in (1, 2):
                got = on_spark.get_training_set(pull_spine, feature_service="everything",
                                                transform_version=version, partition_rows=10)
                want = on_local.get_training_set(pull_spine, feature_service="everything",
                                                 transform_version=version)
                assert got.equals(want)
            # On-demand features by reference, without transforms, full names.
            features = ["arrow_odfv:ratio", "nums:x_float", "pandas_odfv:shifted", "ages:y"]
            got = on_spark.get_training_set(pull_spine, features=features, full_feature_names=True,
                                            partition_rows=20)
            want = on_local.get_training_set(pull_spine, features=features,
                                             full_feature_names=True)
            assert got.equals(want)
            assert got["arrow_odfv__ratio"].null_count < got.num_rows
    finally:
        spark_server.shutdown()
        local_server.shutdown()


def test_pending_erasures_are_left_out_of_spark_training_sets_as_locally(
    spark: Any, tmp_path: Path, make_config: Callable[..., QuiverConfig],
    apply_objects: Callable[..., Any], flight_server: Server,
) -> None:
    local = make_config(tmp_path)
    write_history(Path(local.offline_root))
    apply_objects(local, [user, merchant], [user_stats, merchant_stats], [model])
    spine = make_spine(400, seed=4)
    erased = int(spine["user_id"][0].as_py())
    # Requested, not yet carried out (the history still holds the rows).
    pending = GovernancePaths.of(local).erasures_pending
    pending.mkdir(parents=True, exist_ok=True)
    request = ErasureRequest("e-1", "2024-01-01T00:00:00+00:00", "test", ("user_stats",),
                             {"user_id": [erased]})
    (pending / "e-1.json").write_bytes(request.to_json())
    with (
        flight_server(with_engine(local, "spark")) as on_spark,
        flight_server(local) as on_local,
        TrainingClient(on_spark) as spark_client,
        TrainingClient(on_local) as local_client,
    ):
        got = spark_client.get_training_set(spine, feature_service="model")
        want = local_client.get_training_set(spine, feature_service="model")
    assert got.equals(want)
    rows = [i for i, u in enumerate(spine["user_id"].to_pylist()) if u == erased]
    assert rows and all(got["spend"][i].as_py() is None for i in rows)
    assert got["spend"].null_count < got.num_rows


def test_a_training_dataset_pulled_again_on_spark_reads_its_pinned_files(
    spark: Any, tmp_path: Path, make_config: Callable[..., QuiverConfig],
    apply_objects: Callable[..., Any], flight_server: Server,
) -> None:
    config = with_engine(make_config(tmp_path), "spark")
    root = Path(config.offline_root)
    write_history(root)
    apply_objects(config, [user, merchant], [user_stats, merchant_stats], [model])
    spine = make_spine(300, seed=6)
    with flight_server(config) as location, TrainingClient(location) as client:
        made = client.create_training_dataset("pinned", spine, feature_service="model",
                                              partition_rows=128)
        # Corrected history lands: the same events created later, other amounts.
        newer = pq.read_table(root / "user_stats" / "part-0.parquet")
        newer = newer.set_column(newer.schema.get_field_index("spend"), "spend",
                                 pc.add(newer["spend"], 1000.0))
        newer = newer.set_column(newer.schema.get_field_index("created"), "created",
                                 pc.add(newer["created"], pa.scalar(timedelta(seconds=1))))
        pq.write_table(newer, root / "user_stats" / "part-9.parquet")
        again = client.get_training_dataset("pinned", made.version, partition_rows=128)
        fresh = client.get_training_set(spine, feature_service="model")
    assert again.table.equals(made.table)
    assert not fresh.equals(made.table)  # the newest history differs: the pin is what held
