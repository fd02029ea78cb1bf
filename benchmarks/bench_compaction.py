"""Compaction benchmark: `make bench-compaction`.

Pushes N small batches offline (one file each, as `push(..., to="offline")`
does) into one feature view, then times a 100-row training set through a real
Flight server, and the time of `quiver compact`, and the same training set
after compaction. The floor, measured in the same run, is the same rows
written as one Parquet file. Every training set is pulled by a fresh server
(no cached history index), as the first pull after a change is; the table
after compaction is checked equal to the one before.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from quiver import TrainingClient
from quiver_flight.server import create_flight_server
from quiver_server.config import QuiverConfig, load_config
from quiver_server.governance.compaction import compact_view
from quiver_server.governance.paths import GovernancePaths
from quiver_server.offline.append import append_history
from quiver_server.registry.store import RegistryStore
from quiver_server.repo import apply

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench" / "compaction"
T0 = datetime(2024, 6, 1, tzinfo=UTC)
US = pa.timestamp("us", tz="UTC")

DEFINITIONS = '''
from datetime import timedelta
from quiver import Entity, FeatureView, Field, Float64, Int64, ParquetSource

user = Entity(name="user", join_keys=[Field("user_id", Int64)])
stats = FeatureView(
    name="stats", entities=[user],
    schema=[Field("spend", Float64), Field("txns", Int64)],
    source=ParquetSource(path="stats", created_timestamp_field="created"),
    ttl=timedelta(0),
)
'''


def times(seconds: np.ndarray) -> pa.Array:
    base = int(T0.timestamp()) * 1_000_000
    return pa.array(base + seconds.astype(np.int64) * 1_000_000, pa.int64()).cast(US)


def make_repo(path: Path) -> QuiverConfig:
    shutil.rmtree(path, ignore_errors=True)
    (path / "data" / "stats").mkdir(parents=True)
    (path / "quiver.yaml").write_text(
        "project: bench\nregistry: data/registry\noffline_store: {root: data}\n"
        "telemetry: {metrics: {enabled: false}, logging: {access_log: false}}\n"
    )
    (path / "features.py").write_text(DEFINITIONS)
    config = load_config(path, env={})
    apply(config)
    return config


def batches(pushes: int, rows: int) -> list[pa.Table]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(pushes):
        when = times(rng.integers(0, 86_400 * 3, rows))
        out.append(pa.table({
            "user_id": rng.integers(0, 1000, rows), "event_timestamp": when, "created": when,
            "spend": rng.random(rows), "txns": rng.integers(0, 50, rows),
        }))
    return out


def pull(config: QuiverConfig, spine: pa.Table) -> tuple[float, pa.Table]:
    server, port = create_flight_server(config, "grpc://127.0.0.1:0")
    try:
        with TrainingClient(f"grpc://127.0.0.1:{port}") as client:
            began = time.perf_counter()
            table = client.get_training_set(spine, features=["stats:spend", "stats:txns"])
            return time.perf_counter() - began, table
    finally:
        server.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pushes", type=int, default=2800)
    parser.add_argument("--rows-per-push", type=int, default=5)
    args = parser.parse_args()

    pushed = batches(args.pushes, args.rows_per_push)
    rng = np.random.default_rng(1)
    spine = pa.table({
        "user_id": rng.integers(0, 1000, 100),
        "event_timestamp": times(rng.integers(86_400, 86_400 * 4, 100)),
    })

    floor = make_repo(BENCH_DIR / "floor")
    pq.write_table(pa.concat_tables(pushed), Path(floor.offline_root) / "stats" / "all.parquet")
    floor_seconds, floor_table = pull(floor, spine)

    config = make_repo(BENCH_DIR / "pushed")
    view = RegistryStore(config.registry_path).latest().feature_view("stats")
    began = time.perf_counter()
    for table in pushed:
        append_history(config.offline_root, view, table)
    push_seconds = time.perf_counter() - began
    files = sum(1 for _ in (Path(config.offline_root) / "stats").rglob("*.parquet"))
    before_seconds, before = pull(config, spine)

    began = time.perf_counter()
    result = compact_view(GovernancePaths.of(config), RegistryStore(config.registry_path).latest(),
                          "stats", "bench")
    compact_seconds = time.perf_counter() - began
    after_seconds, after = pull(config, spine)
    if not after.equals(before) or not before.equals(floor_table):
        print("error: the training set changed", file=sys.stderr)
        return 1

    print(f"{args.pushes} pushes of {args.rows_per_push} rows ({files} files, written in "
          f"{push_seconds:.1f} s); training set of {spine.num_rows} rows through Flight:")
    print(f"  floor, one file:            {floor_seconds * 1000:8.1f} ms")
    print(f"  {files:>5} pushed files:        {before_seconds * 1000:8.1f} ms")
    print(f"  quiver compact:             {compact_seconds * 1000:8.1f} ms "
          f"({result.files_before} -> {result.files_after} files)")
    print(f"  {result.files_after:>5} files after compact: {after_seconds * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
