"""Materialization benchmark: `make bench-materialize`.

Writes 1M rows of Parquet history for one feature view with 20 features
(10 float64, 8 int64, 2 string) and a created timestamp, applies the repo, and
times `materialize_range` end to end into the embedded SQLite store, in two
shapes: 5 history rows per entity (200k entities) and every row a different
entity (1M upserts). The floor, measured in the same run, is SQLite itself:
a plain `executemany` INSERT of the same number of 23-column rows into an empty
table, with the same pragmas, no conflict handling and no Arrow work.
Use `--online-store aerospike` to materialize into a local Aerospike instead.
`--profiles` adds an arm with feature-monitoring profiles on (what `quiver
materialize` does by default), against a fresh online store.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench" / "materialize"
FLOATS = [f"f{i}" for i in range(10)]
INTS = [f"i{i}" for i in range(8)]
STRINGS = ["s0", "s1"]

DEFINITIONS = f'''
from datetime import timedelta
from quiver import Entity, FeatureView, Field, Float64, Int64, ParquetSource, String

user = Entity(name="user", join_keys=[Field("user_id", Int64)])
stats = FeatureView(
    name="stats",
    entities=[user],
    schema=[{", ".join(f'Field("{n}", Float64)' for n in FLOATS)},
            {", ".join(f'Field("{n}", Int64)' for n in INTS)},
            {", ".join(f'Field("{n}", String)' for n in STRINGS)}],
    source=ParquetSource(path="stats", timestamp_field="event_timestamp",
                         created_timestamp_field="created"),
    ttl=timedelta(0),
)
'''


def write_repo(path: Path, rows: int, entities: int, online_store: str, hosts: str) -> None:
    if path.exists():
        shutil.rmtree(path)
    (path / "data" / "stats").mkdir(parents=True)
    store = (
        "online_store:\n  type: sqlite\n  path: data/online.db\n"
        if online_store == "sqlite"
        else f"online_store:\n  type: aerospike\n  hosts: [\"{hosts}\"]\n  namespace: quiver\n"
    )
    project = f"bench_mat_{random.randrange(1 << 30):x}"
    (path / "quiver.yaml").write_text(f"project: {project}\nregistry: data/registry\n{store}")
    (path / "features.py").write_text(DEFINITIONS)
    rng = random.Random(1)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    ids = [i % entities for i in range(rows)]
    events = [start + timedelta(seconds=i) for i in range(rows)]
    columns: dict[str, pa.Array] = {
        "user_id": pa.array(ids, pa.int64()),
        "event_timestamp": pa.array(events, pa.timestamp("us", tz="UTC")),
        "created": pa.array(events, pa.timestamp("us", tz="UTC")),
    }
    for name in FLOATS:
        columns[name] = pa.array([rng.random() for _ in range(rows)], pa.float64())
    for name in INTS:
        columns[name] = pa.array([rng.randrange(1000) for _ in range(rows)], pa.int64())
    for name in STRINGS:
        columns[name] = pa.array([rng.choice(["US", "GB", "DE", "FR"]) for _ in range(rows)])
    pq.write_table(pa.table(columns), path / "data" / "stats" / "part-0.parquet", row_group_size=250_000)


def materialize(path: Path, profiles: bool = False) -> tuple[float, int]:
    """Materialize the whole history into an empty online store; (seconds, rows written)."""
    from quiver_server.config import load_config
    from quiver_server.materialize import materialize_range
    from quiver_server.monitoring.sinks import ProfileWriter
    from quiver_server.monitoring.storage import ProfileStore
    from quiver_server.repo import apply

    for leftover in (path / "data").glob("online.db*"):  # each arm starts from an empty store
        leftover.unlink()
    config = load_config(path, env={})
    apply(config)
    writer = ProfileWriter(ProfileStore(config.offline_root)) if profiles else None
    began = time.perf_counter()
    [result] = materialize_range(
        config, datetime(2023, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC),
        profiles=writer,
    )
    return time.perf_counter() - began, result.rows_written


def sqlite_floor(path: Path, rows: int) -> float:
    db = path / "floor.db"
    for leftover in path.glob("floor.db*"):  # an earlier run's table and WAL
        leftover.unlink()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    names = ["k", "e", "c", *FLOATS, *INTS, *STRINGS]
    conn.execute(f"CREATE TABLE t ({', '.join(names)}, PRIMARY KEY (k)) WITHOUT ROWID")
    rng = random.Random(2)
    data = [
        (i.to_bytes(9, "big"), i, i, *[rng.random() for _ in FLOATS],
         *[rng.randrange(1000) for _ in INTS], "US", "GB")
        for i in range(rows)
    ]
    sql = f"INSERT INTO t VALUES ({', '.join('?' for _ in names)})"
    began = time.perf_counter()
    with conn:
        for chunk in range(0, rows, 50_000):
            conn.executemany(sql, data[chunk:chunk + 50_000])
    took = time.perf_counter() - began
    conn.close()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--online-store", choices=["sqlite", "aerospike"], default="sqlite")
    parser.add_argument("--aerospike-host", default="127.0.0.1:3000")
    parser.add_argument("--quick", action="store_true", help="100k rows")
    parser.add_argument("--profiles", action="store_true",
                        help="also materialize with monitoring profiles on")
    args = parser.parse_args()
    rows = 100_000 if args.quick else args.rows
    results = []
    for label, entities in (("5 rows per entity", rows // 5), ("1 row per entity", rows)):
        path = BENCH_DIR / label.replace(" ", "_")
        print(f"writing {rows:,} history rows ({label}) ...", flush=True)
        write_repo(path, rows, entities, args.online_store, args.aerospike_host)
        seconds, written = materialize(path)
        results.append((f"materialize, {label}", rows, written, seconds))
        if args.profiles:
            seconds, written = materialize(path, profiles=True)
            results.append((f"  + profiles, {label}", rows, written, seconds))
    floor = sqlite_floor(BENCH_DIR, rows)
    print(f"\n{'run':<32} {'rows read':>10} {'written':>10} {'seconds':>8} {'rows/s':>10}")
    for label, read, written, seconds in results:
        print(f"{label:<32} {read:>10,} {written:>10,} {seconds:>8.2f} {read / seconds:>10,.0f}")
    print(f"{'floor: raw SQLite INSERT':<32} {rows:>10,} {rows:>10,} {floor:>8.2f} {rows / floor:>10,.0f}")
    print(f"\nonline store: {args.online_store}; rows/s counts history rows read (target >= 200k/s into SQLite)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
