"""The Spark engine's training sets equal the local engine's, cell for cell.

Hand-computed edge cases run on both engines in tests/unit/test_point_in_time.py
(its `spark` parameter); here, randomized histories and spines with frequent
ties, mixed units and several files, and the whole path through Flight.
"""

from __future__ import annotations

import itertools
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from spark_support import BothEngines

from quiver import (
    Entity,
    FeatureView,
    Field,
    Float32,
    Int32,
    Int64,
    ParquetSource,
    String,
    Timestamp,
)
from quiver_server.registry.snapshot import FeatureRef

# A first Spark test also starts the JVM of the run's one session.
pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NS = pa.timestamp("ns", tz="UTC")

user = Entity("user", (Field("user_id", Int64),))
shop = Entity("shop", (Field("shop", String), Field("branch", Int32)))


def tick(n: int) -> int:
    """Nanoseconds of tick `n`: 250 ms apart, so ttls of whole seconds fall on and between ticks."""
    return int(T0.timestamp()) * 10**9 + n * 250_000_000


history_rows = st.lists(
    st.tuples(
        st.integers(0, 3),                                    # key
        st.integers(0, 14),                                   # event tick (ties are common)
        st.one_of(st.none(), st.integers(0, 3)),              # created tick
        st.one_of(st.none(), st.integers(-100, 100)),         # feature value
        st.integers(0, 499),                                  # sub-microsecond nanoseconds
    ),
    max_size=60,
)
spine_rows = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(0, 4)), st.integers(0, 4), st.integers(-2, 18),
              st.sampled_from([0, 1, 999, -1])),
    max_size=60,
)


def write_parts(directory: Path, table: pa.Table, cuts: list[int]) -> None:
    directory.mkdir(parents=True)
    bounds = sorted({0, table.num_rows, *(c for c in cuts if c < table.num_rows)})
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        pq.write_table(table.slice(a, b - a), directory / f"part-{i:02d}.parquet")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    users=history_rows, shops=history_rows, spine=spine_rows,
    user_ttl=st.sampled_from([0, 1, 3]), shop_ttl=st.sampled_from([0, 2]),
    cuts=st.lists(st.integers(0, 60), max_size=3), nanos=st.booleans(),
)
# A history whose only feature values are null (typed columns, not Arrow's null type).
@example(users=[], shops=[(0, 0, None, None, 0)], spine=[(0, 0, 1, 0)], user_ttl=0, shop_ttl=0,
         cuts=[], nanos=False)
def test_random_training_sets_match(
    spark: Any, users: list[tuple[Any, ...]], shops: list[tuple[Any, ...]],
    spine: list[tuple[Any, ...]], user_ttl: int, shop_ttl: int, cuts: list[int], nanos: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Users: event times in ns or us, created in ns (compared at its own precision).
        event_type = NS if nanos else pa.timestamp("us")  # naive us: read as UTC
        write_parts(root / "users", pa.table({
            "user_id": pa.array([k for k, *_ in users], pa.int32()),
            "ts": pa.array([tick(e) + (ns if nanos else 0) for _, e, _, _, ns in users], pa.int64())
            .cast(NS).cast(event_type, safe=False),
            "created": pa.array([None if c is None else tick(c) + ns for _, _, c, _, ns in users],
                                pa.int64()).cast(NS),
            "amount": pa.array([None if v is None else v / 4 for *_, v, _ in users], pa.float64()),
            "seen": pa.array([tick(e) + ns for _, e, _, _, ns in users], pa.int64()).cast(NS),
        }), cuts)
        write_parts(root / "shops", pa.table({
            "shop_name": pa.array(["ab"[k % 2] for k, *_ in shops], pa.large_string()),
            "branch": pa.array([k // 2 for k, *_ in shops], pa.int64()),
            "event_timestamp": pa.array([tick(e) for _, e, *_ in shops], pa.int64()).cast(NS)
            .cast(pa.timestamp("ms", tz="UTC"), safe=False),
            "count": pa.array([v for *_, v, _ in shops], pa.int64()),
            "label": pa.array([None if v is None else f"v{v % 7}" for *_, v, _ in shops],
                              pa.string()),
        }), cuts)
        user_view = FeatureView(
            name="users", entities=[user],
            schema=[Field("amount", Float32), Field("seen", Timestamp)],
            source=ParquetSource("users", timestamp_field="ts", created_timestamp_field="created"),
            ttl=timedelta(seconds=user_ttl),
        )
        shop_view = FeatureView(
            name="shops", entities=[shop],
            schema=[Field("count", Int64), Field("label", String)],
            source=ParquetSource("shops", field_mapping={"shop_name": "shop"}),
            ttl=timedelta(seconds=shop_ttl),
        )
        table = pa.table({
            "label": pa.array([i % 2 == 0 for i in range(len(spine))]),
            "user_id": pa.array([u for u, *_ in spine], pa.int64()),
            "shop": pa.array(["ab"[s % 2] for _, s, *_ in spine], pa.string()),
            "branch": pa.array([s // 2 for _, s, *_ in spine], pa.int32()),
            "event_timestamp": pa.array([tick(t) + d for *_, t, d in spine], pa.int64()).cast(NS),
        })
        refs = [FeatureRef(v, f) for v in (user_view, shop_view) for f in v.schema]
        BothEngines(tmp, partition_rows=16, batch_rows=5).join_table(table, refs, full_feature_names=True)


def test_history_changed_under_a_spark_job_is_history_changed(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A history file removed (a compaction's swap) while Spark runs the join fails the plan
    as the local engine does -- HISTORY_CHANGED, retry -- not as an internal error."""
    import time

    from spark_support import TableSpine

    from quiver.errors import FailedPreconditionError
    from quiver_flight.engines import TrainingJob, spark_join
    from quiver_flight.pit import output_schema

    history = pa.table({"user_id": pa.array([1, 2], pa.int64()),
                        "ts": pa.array([T0, T0], pa.timestamp("us", tz="UTC")),
                        "amount": pa.array([1.0, 2.0], pa.float64())})
    (tmp_path / "users").mkdir()
    pq.write_table(history.slice(0, 1), tmp_path / "users" / "a.parquet")
    pq.write_table(history.slice(1, 1), tmp_path / "users" / "b.parquet")
    view = FeatureView(name="users", entities=[user], schema=[Field("amount", Float32)],
                       source=ParquetSource("users", timestamp_field="ts"))
    refs = [FeatureRef(view, view.schema[0])]
    spine = pa.table({"user_id": pa.array([1, 2], pa.int64()),
                      "event_timestamp": pa.array([T0, T0], pa.timestamp("us", tz="UTC"))})
    engine = BothEngines(str(tmp_path)).spark
    sources = engine.locate([view])
    join = spark_join.run_join

    def compacted_meanwhile(*args: Any) -> None:
        (tmp_path / "users" / "b.parquet").unlink()  # as the job starts reading
        join(*args)

    monkeypatch.setattr(spark_join, "run_join", compacted_meanwhile)
    job = TrainingJob(TableSpine.of(spine), refs, sources, output_schema(spine.schema, refs),
                      "event_timestamp", 4, 1, time.time() + 3600)
    with pytest.raises(FailedPreconditionError) as caught:
        engine.stage(job)
    assert caught.value.reason == "HISTORY_CHANGED"
    assert not list((tmp_path / "_staging" / "training").iterdir()), "nothing staged is left"
