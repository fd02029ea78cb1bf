"""A small governed feature repo on disk: two views of one entity, history in
several files, a quiver.yaml so the command line and servers share it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from quiver_server.config import QuiverConfig, load_config

T0 = datetime(2024, 6, 1, tzinfo=UTC)
US = pa.timestamp("us", tz="UTC")

FEATURES = """
from datetime import timedelta
from quiver import Entity, FeatureService, FeatureView, Field, Float64, Int64, ParquetSource

user = Entity("user", (Field("user_id", Int64),), owner="identity@example.com")
stats = FeatureView(
    name="stats", entities=[user], schema=[Field("spend", Float64), Field("txns", Int64)],
    source=ParquetSource("stats", created_timestamp_field="created"), ttl=timedelta(days=5),
    owner="risk@example.com", description="Card spend per user", tags={"pii": "no"},
)
profile = FeatureView(
    name="profile", entities=[user], schema=[Field("age", Int64)], source=ParquetSource("profile"),
    owner="identity@example.com", description="Declared age", tags={"pii": "yes"},
)
model = FeatureService(name="model", features=[stats, profile], owner="ml@example.com",
                       description="Fraud model inputs")
"""
CONFIG = """project: governed
registry: registry
offline_store: {root: data}
online_store: {type: sqlite, path: online.db}
telemetry:
  metrics: {enabled: false}
  logging: {access_log: false}
"""
FILES = 4
ROWS_PER_FILE = 150


def times(seconds: Any) -> pa.Array:
    base = int(T0.timestamp()) * 1_000_000
    return pa.array(base + np.asarray(seconds, np.int64) * 1_000_000, pa.int64()).cast(US)


def write_history(root: Path, seed: int = 0) -> None:
    """`stats` in FILES files of users 0..29 (user 7 only in the odd ones); `profile` in one."""
    rng = np.random.default_rng(seed)
    (root / "stats").mkdir(parents=True)
    for part in range(FILES):
        users = rng.integers(0, 30, ROWS_PER_FILE)
        users = np.where(users == 7, 8, users)
        if part % 2:
            users[:5] = 7
        events = times(rng.integers(0, 86_400 * 4, ROWS_PER_FILE))
        pq.write_table(pa.table({
            "user_id": users, "event_timestamp": events, "created": events,
            "spend": rng.random(ROWS_PER_FILE) * 100, "txns": rng.integers(0, 9, ROWS_PER_FILE),
        }), root / "stats" / f"part-{part}.parquet")
    (root / "profile").mkdir()
    pq.write_table(pa.table({
        "user_id": np.arange(30), "event_timestamp": times(np.zeros(30)),
        "age": rng.integers(18, 90, 30),
    }), root / "profile" / "data.parquet")


def spine(rows: int = 120, seed: int = 3, users: int = 32) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "user_id": rng.integers(0, users, rows),
        "event_timestamp": times(rng.integers(86_400 * 4, 86_400 * 5, rows)),
        "label": rng.random(rows) < 0.3,
    })


def write_repo(base: Path) -> QuiverConfig:
    """quiver.yaml, features.py and history under `base`, applied with `quiver apply`'s code."""
    from quiver_server.repo import apply

    base.mkdir(parents=True, exist_ok=True)
    (base / "quiver.yaml").write_text(CONFIG)
    (base / "features.py").write_text(FEATURES)
    write_history(base / "data")
    config = load_config(base, env={})
    apply(config)
    return config


def history_rows(config: QuiverConfig, view: str = "stats") -> pa.Table:
    """Every history row of a view, in source order (files by path, rows in file order)."""
    files = sorted((Path(config.offline_root) / view).rglob("*.parquet"))
    files = [f for f in files if not any(p.startswith((".", "_")) for p in f.relative_to(Path(config.offline_root)).parts)]
    return pa.concat_tables([pq.ParquetFile(f).read() for f in files])
