"""Feature-monitoring benchmark: `make bench-monitor`.

Three costs, each next to its baseline measured in the same run:

1. Serving: 1 entity x 20 features lookups (bench_online's demo repo, SQLite)
   against two `quiver serve` processes, monitoring off and on at the default
   sample rate (`monitoring.serving_sample_rate`), in alternating rounds;
   p50/p99 and the p50 overhead (target <= 5%).
2. Materialization: bench_materialize's 1M-row history, materialized into an
   empty store without and with profiles, alternating; rows/s and the ratio
   (target >= 85%).
3. `quiver monitor --current history` over 10M history rows of 20 features
   spread over 8 days (profiling the history and computing drift), and
   `quiver monitor` over the stored profiles; wall time (target < 60 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_materialize  # sibling scripts, not packages
import bench_online
from bench_online import METHOD, ROOT, build_requests, free_port, run_load, wait_ready

BENCH_DIR = ROOT / ".bench" / "monitor"


# --- 1. serving ----------------------------------------------------------------------

def start_server(repo: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "QUIVER_TELEMETRY__LOGGING__LEVEL": "warning",
                   "QUIVER_TELEMETRY__METRICS__PORT": str(free_port()), **env}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiver_server.cli", "--repo", str(repo), "serve",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=environment, stdout=subprocess.DEVNULL,
    )
    wait_ready(f"127.0.0.1:{port}")
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), 0.0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serving(users: int, count: int, rounds: int) -> dict[str, dict[str, float]]:
    bench_online.BENCH_DIR = BENCH_DIR / "online"
    repo = bench_online.prepare_repo(users, "sqlite", "", "")
    request = build_requests()["1x20"]
    arms = {"profiling off": {"QUIVER_MONITORING__ENABLED": "false"}, "profiling on": {}}
    ports = {name: free_port() for name in arms}
    servers = {name: start_server(repo, ports[name], env) for name, env in arms.items()}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    try:
        for number in range(rounds):
            order = list(arms) if number % 2 == 0 else list(reversed(arms))
            for name in order:
                cpu = cpu_seconds(servers[name].pid)
                result = run_load(f"127.0.0.1:{ports[name]}", METHOD, request, 1, count)
                # Server CPU per request (warmup included): less noisy than latency on a
                # shared machine.
                result["cpu_us"] = (cpu_seconds(servers[name].pid) - cpu) / (count + 200) * 1e6
                results[name].append(result)
            print(f"  round {number + 1}/{rounds}: " + "  ".join(
                f"{name} p50 {results[name][-1]['p50_ms']:.3f} ms" for name in arms), flush=True)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    summary = {}
    for name, runs in results.items():
        summary[name] = {key: statistics.median(r[key] for r in runs)
                         for key in ("p50_ms", "p99_ms", "rps", "cpu_us")}
        summary[name]["best_p50_ms"] = min(r["p50_ms"] for r in runs)
    return summary


def sampler_cost(repo: Path, lookups: int) -> dict[str, float]:
    """In-process CPU cost of profiling one 1x20 lookup: what the latency arms cannot resolve
    on a busy machine. The graded columns are the server's own for a real lookup."""
    import tempfile

    from quiver_server.config import load_config
    from quiver_server.monitoring.sinks import ProfileAccumulator, ServingSampler
    from quiver_server.monitoring.storage import ProfileStore
    from quiver_server.online.factory import open_online_store
    from quiver_server.registry.store import RegistryStore
    from quiver_server.serving.online_read import build_plan, read_online

    config = load_config(repo, env={})
    snapshot = RegistryStore(config.registry_path).latest()
    plan = build_plan(snapshot, [], "fraud_model_v1", False)
    store = open_online_store(config)
    columns = read_online(store, plan, {"user_id": [1], "merchant_id": [10]}, 1)
    store.close()
    costs = {}
    with tempfile.TemporaryDirectory() as root:
        for rate in (config.monitoring.serving_sample_rate, 1.0):
            accumulator = ProfileAccumulator(ProfileStore(root), 3600, 3600.0)
            sampler = ServingSampler(accumulator, rate)
            began = time.process_time()
            for _ in range(lookups):
                sampler.observe(plan.parts, columns)
            observed = time.process_time() - began
            began = time.process_time()
            accumulator.flush()  # drain the samples into sketches and write them
            flushed = time.process_time() - began
            costs[f"rate {rate:g}"] = (observed + flushed) / lookups * 1e6
    return costs


# --- 2. materialization --------------------------------------------------------------

def materialization(rows: int, rounds: int) -> dict[str, float]:
    path = BENCH_DIR / "materialize"
    print(f"  writing {rows:,} history rows (5 per entity) ...", flush=True)
    bench_materialize.write_repo(path, rows, rows // 5, "sqlite", "")
    rates: dict[str, list[float]] = {"without profiles": [], "with profiles": []}
    for number in range(rounds):
        order = [False, True] if number % 2 == 0 else [True, False]
        for profiles in order:
            seconds, _ = bench_materialize.materialize(path, profiles=profiles)
            rates["with profiles" if profiles else "without profiles"].append(rows / seconds)
        print(f"  round {number + 1}/{rounds}: " + "  ".join(
            f"{name} {values[-1]:,.0f} rows/s" for name, values in rates.items()), flush=True)
    return {name: statistics.median(values) for name, values in rates.items()}


# --- 3. quiver monitor over a large history ------------------------------------------

DEFINITIONS = '''
from datetime import timedelta
from quiver import Entity, FeatureView, Field, Float64, Int64, ParquetSource, String

user = Entity(name="user", join_keys=[Field("user_id", Int64)])
stats = FeatureView(
    name="stats", entities=[user],
    schema=[*[Field(f"f{i}", Float64) for i in range(12)],
            *[Field(f"i{i}", Int64) for i in range(6)],
            Field("s0", String), Field("s1", String)],
    source=ParquetSource(path="stats", timestamp_field="event_timestamp"),
    ttl=timedelta(days=2),
)
'''


def write_history(path: Path, rows: int, now: datetime) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)
    (path / "data" / "stats").mkdir(parents=True)
    (path / "quiver.yaml").write_text("project: bench_monitor\nregistry: data/registry\n")
    (path / "features.py").write_text(DEFINITIONS)
    rng = np.random.default_rng(5)
    span_us = 8 * 86_400 * 1_000_000
    start_us = int((now - timedelta(days=8)).timestamp() * 1_000_000)
    chunk = 1_000_000
    countries = pa.array(["US", "GB", "DE", "FR", "BR", "IN", "JP"])
    for number, offset in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - offset)
        columns: dict[str, pa.Array] = {
            "user_id": pa.array(rng.integers(0, 1_000_000, n)),
            "event_timestamp": pa.array(
                np.sort(rng.integers(start_us, start_us + span_us, n)).astype("datetime64[us]")
            ).cast(pa.timestamp("us", tz="UTC")),
        }
        # The last day's f0 is shifted, so the run finds one drifted feature.
        shift = 1.0 + (columns["event_timestamp"].cast(pa.int64()).to_numpy()
                       > start_us + span_us - 86_400 * 1_000_000)
        for i in range(12):
            values = rng.normal(100, 15, n)
            columns[f"f{i}"] = pa.array(values * shift if i == 0 else values)
        for i in range(6):
            columns[f"i{i}"] = pa.array(rng.poisson(20, n).astype(np.int64))
        for i in range(2):
            columns[f"s{i}"] = countries.take(pa.array(rng.integers(0, len(countries), n)))
        pq.write_table(pa.table(columns), path / "data" / "stats" / f"part-{number:03d}.parquet",
                       row_group_size=250_000)


def monitor_history(rows: int) -> dict[str, float]:
    from quiver_server.config import load_config
    from quiver_server.monitoring.monitor import run_monitor
    from quiver_server.repo import apply

    path = BENCH_DIR / "history"
    now = datetime.now(UTC)
    print(f"  writing {rows:,} history rows of 20 features over 8 days ...", flush=True)
    write_history(path, rows, now)
    config = load_config(path, env={})
    apply(config)
    began = time.perf_counter()
    result = run_monitor(config, current="history", now=now)
    seconds = time.perf_counter() - began
    drifted = [r.drift.feature for r in result.drifted]
    print(f"  drifted: {drifted}", flush=True)
    # The same run through the CLI, as the CronJob does it (process start included).
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quiver_server.cli", "--repo", str(path), "monitor",
                    "--current", "history"], check=True, stdout=subprocess.DEVNULL)
    cli = time.perf_counter() - began
    return {"in process": seconds, "quiver monitor CLI": cli}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="lookups per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--materialize-rows", type=int, default=1_000_000)
    parser.add_argument("--history-rows", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="a short run for smoke testing")
    args = parser.parse_args()
    count, rounds = (300, 2) if args.quick else (args.requests, args.rounds)
    materialize_rows = 100_000 if args.quick else args.materialize_rows
    history_rows = 500_000 if args.quick else args.history_rows

    print("1. serving with profiling off / on", flush=True)
    served = serving(200 if args.quick else 2000, count, rounds)
    sampling = sampler_cost(BENCH_DIR / "online", 20_000 if args.quick else 200_000)
    print("2. materialization without / with profiles", flush=True)
    materialized = materialization(materialize_rows, 3 if not args.quick else 1)
    print("3. quiver monitor over the history", flush=True)
    monitored = monitor_history(history_rows)

    print(f"\n1x20 lookups, 1 client, {count} requests x {rounds} rounds (median over rounds)")
    print(f"{'server':<16} {'p50 ms':>8} {'best p50':>9} {'p99 ms':>8} {'req/s':>8} "
          f"{'CPU us/req':>11}")
    for name, s in served.items():
        print(f"{name:<16} {s['p50_ms']:>8.3f} {s['best_p50_ms']:>9.3f} {s['p99_ms']:>8.3f} "
              f"{s['rps']:>8.0f} {s['cpu_us']:>11.0f}")
    off, on = served["profiling off"], served["profiling on"]
    print(f"profiling overhead at the default sample rate: p50 "
          f"{100 * (on['p50_ms'] / off['p50_ms'] - 1):+.1f}% (best round "
          f"{100 * (on['best_p50_ms'] / off['best_p50_ms'] - 1):+.1f}%), server CPU "
          f"{on['cpu_us'] - off['cpu_us']:+.0f} us/request (target: p50 <= 5%)")
    for name, micros in sampling.items():
        print(f"in-process cost of profiling a lookup at sample {name}: {micros:.2f} us CPU "
              f"({100 * micros / (off['p50_ms'] * 1000):.2f}% of the p50)")
    print(f"\nmaterialize {materialize_rows:,} rows into SQLite (median of alternating runs)")
    for name, rate in materialized.items():
        print(f"{name:<18} {rate:>12,.0f} rows/s")
    ratio = materialized["with profiles"] / materialized["without profiles"]
    print(f"with / without: {100 * ratio:.1f}% (target >= 85%)")
    print(f"\nquiver monitor --current history over {history_rows:,} rows x 20 features")
    for name, seconds in monitored.items():
        print(f"{name:<20} {seconds:>8.2f} s (target < 60 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
