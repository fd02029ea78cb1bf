"""The feature repo and spines the Flight tests share, and a server with its handle.

Two views (`user_stats` with a ttl and a created timestamp, `merchant_stats` keyed by string),
a service over both, seeded Parquet history, and spines whose keys partly miss the history.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from quiver import Entity, FeatureService, FeatureView, Field, Float64, Int64, ParquetSource, String
from quiver_flight.pit import PointInTimeEngine
from quiver_flight.server import TrainingSetFlightServer, create_flight_server
from quiver_server.config import QuiverConfig
from quiver_server.registry.store import RegistryStore

T0 = datetime(2024, 6, 1, tzinfo=UTC)
US = pa.timestamp("us", tz="UTC")
DAY = 86_400

user = Entity("user", (Field("user_id", Int64),))
merchant = Entity("merchant", (Field("merchant_id", String),))
user_stats = FeatureView(
    name="user_stats", entities=[user],
    schema=[Field("spend", Float64), Field("txns", Int64), Field("country", String)],
    source=ParquetSource("user_stats", created_timestamp_field="created"),
    ttl=timedelta(days=2),
)
merchant_stats = FeatureView(
    name="merchant_stats", entities=[merchant],
    schema=[Field("risk", Float64), Field("volume", Int64)],
    source=ParquetSource("merchant_stats"),
)
model = FeatureService(name="model", features=[user_stats, merchant_stats[["risk"]]])

def write_history(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    events = seconds(rng.integers(0, 10 * DAY, n))
    (root / "user_stats").mkdir(parents=True)
    for part, rows in enumerate((slice(0, 1700), slice(1700, n))):
        pq.write_table(pa.table({
            "user_id": rng.integers(0, 300, n)[rows],
            "event_timestamp": events[rows],
            "created": events[rows],
            "spend": pa.array(rng.random(n) * 100, mask=rng.random(n) < 0.05)[rows],
            "txns": rng.integers(0, 50, n)[rows],
            "country": pa.array(rng.choice(["US", "DE", "BR"], n)[rows].tolist()),
        }), root / "user_stats" / f"part-{part}.parquet")
    (root / "merchant_stats").mkdir()
    m = 400
    pq.write_table(pa.table({
        "merchant_id": pa.array([f"m{i}" for i in rng.integers(0, 40, m)]),
        "event_timestamp": seconds(rng.integers(0, 10 * DAY, m)),
        "risk": rng.random(m),
        "volume": rng.integers(0, 1000, m),
    }), root / "merchant_stats" / "data.parquet")


def seconds(values: np.ndarray) -> pa.Array:
    """Timestamps `values` seconds after T0."""
    start = int(T0.timestamp()) * 1_000_000
    return pa.array(start + values.astype(np.int64) * 1_000_000, pa.int64()).cast(US)


def make_spine(rows: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "user_id": rng.integers(0, 320, rows),
        "merchant_id": pa.array([f"m{i}" for i in rng.integers(0, 45, rows)], pa.string()),
        "event_timestamp": seconds(rng.integers(0, 11 * DAY, rows)),
        "label": rng.integers(0, 2, rows),
    })


def expected(config: QuiverConfig, spine: pa.Table, service: str = "model", **kw: Any) -> pa.Table:
    """The engine's own answer, computed in-process (the engine is unit-tested)."""
    snapshot = RegistryStore(config.registry_path).latest()
    refs = snapshot.resolve(feature_service=service)
    return PointInTimeEngine(config.offline_root).join_table(spine, refs, **kw)


ENTITIES = [user, merchant]
VIEWS = [user_stats, merchant_stats]
SERVICES = [model]


@contextmanager
def running(config: QuiverConfig, **kwargs: Any) -> Iterator[tuple[TrainingSetFlightServer, str]]:
    """A server from `create_flight_server(config, **kwargs)`, with its location."""
    server, port = create_flight_server(config, **kwargs)
    with server:
        yield server, f"grpc://127.0.0.1:{port}"
