"""Training-set benchmark: `make bench-training` (`--quick` for a smaller run).

Generates a feature history of 10M rows over 3 feature views (20 features:
int64, int32, float64, bool and string; int64 and string join keys; ttls of
30 days, 7 days and unlimited) and spines of 1M and 4M labelled events, then
pulls point-in-time training sets end to end through Arrow Flight: a Quiver
Flight server in one process, the `TrainingClient` in this one (upload, plan,
parallel fetch). For each spine it reports wall time, spine rows/s, MB/s of
Arrow data received, time to the first batch, and the server's peak RSS (a
fresh server per spine, so each peak is that spine's). The first pull of a
fresh server also builds the history index ("cold"); later pulls reuse it.

The floor, measured in the same run: a bare Flight server (no Quiver code)
streaming an in-memory table of the same schema and size, to one client
stream and to as many parallel streams as the client uses.

Transformations: the same 20 features as `fraud_model_scaled`, 5 of them
standardized with parameters fitted by `quiver fit` on 100k labelled events,
plus one on-demand feature computed from the spine's `amount` column, pulled
warm from the same server in alternating rounds with the untransformed service;
the target is at least 70% of its rows/s.

Data lives under .bench/training/ and is reused across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench" / "training"
T0_US = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z
SPAN_US = 90 * 86_400 * 1_000_000
US = pa.timestamp("us", tz="UTC")

SCALES: dict[str, dict[str, Any]] = {
    "full": {"users": 1_000_000, "merchants": 100_000, "devices": 500_000,
             "rows": (4_000_000, 3_000_000, 3_000_000), "spines": (1_000_000, 4_000_000)},
    "quick": {"users": 100_000, "merchants": 10_000, "devices": 50_000,
              "rows": (400_000, 300_000, 300_000), "spines": (100_000, 400_000)},
}
WORKERS = 4
FILES_PER_VIEW = 4


# --- data -------------------------------------------------------------------------

def _times(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int64()).cast(US)


def _device_names(count: int) -> np.ndarray:
    return np.char.add("dev-", np.arange(count).astype(str)).astype(object)


def generate(directory: Path, scale: dict[str, Any]) -> None:
    """Write the history, spines, quiver.yaml and registry (skipped if already there)."""
    marker = directory / "generated.json"
    if marker.exists() and json.loads(marker.read_text()) == scale:
        return
    rng = np.random.default_rng(42)
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    devices = _device_names(scale["devices"])
    user_rows, merchant_rows, device_rows = scale["rows"]
    started = time.perf_counter()

    def write_view(name: str, rows: int, keys: Callable[[int], dict[str, Any]],
                   features: Callable[[int], dict[str, Any]], created: bool) -> None:
        (data / name).mkdir(exist_ok=True)
        per_file = rows // FILES_PER_VIEW
        for part in range(FILES_PER_VIEW):
            event = T0_US + rng.integers(0, SPAN_US, per_file)
            columns: dict[str, Any] = {**keys(per_file), "event_timestamp": _times(event)}
            if created:
                columns["created"] = _times(event + rng.integers(0, 3_600_000_000, per_file))
            columns.update(features(per_file))
            pq.write_table(pa.table(columns), data / name / f"part-{part}.parquet",
                           row_group_size=262_144)

    countries = np.array(["US", "GB", "DE", "FR", "BR", "IN", "JP", "NG"], dtype=object)
    write_view("user_stats", user_rows, lambda n: {"user_id": rng.integers(0, scale["users"], n)},
               lambda n: {
                   "txn_count_1h": rng.integers(0, 10, n), "txn_count_24h": rng.integers(0, 50, n),
                   "txn_count_7d": rng.integers(0, 300, n), "amount_sum_24h": rng.random(n) * 1e3,
                   "amount_avg_7d": rng.random(n) * 1e2,
                   "distinct_merchants_7d": rng.integers(0, 40, n).astype(np.int32),
                   "last_country": pa.array(countries[rng.integers(0, len(countries), n)], pa.string()),
               }, created=True)
    write_view("merchant_stats", merchant_rows,
               lambda n: {"merchant_id": rng.integers(0, scale["merchants"], n)},
               lambda n: {
                   "chargeback_rate_30d": rng.random(n) * 0.05, "txn_count_24h_m": rng.integers(0, 5000, n),
                   "avg_ticket_30d": rng.random(n) * 200, "refund_rate_30d": rng.random(n) * 0.1,
                   "is_high_risk": rng.random(n) < 0.05, "age_days": rng.integers(0, 4000, n),
                   "category_id": rng.integers(0, 30, n).astype(np.int32),
               }, created=True)
    write_view("device_stats", device_rows,
               lambda n: {"device_id": pa.array(devices[rng.integers(0, len(devices), n)], pa.string())},
               lambda n: {
                   "sessions_7d": rng.integers(0, 100, n), "fail_logins_24h": rng.integers(0, 5, n),
                   "screen_time_7d": rng.random(n) * 50, "is_emulator": rng.random(n) < 0.01,
                   "os": pa.array(np.array(["ios", "android", "web"], dtype=object)[rng.integers(0, 3, n)],
                                  pa.string()),
                   "risk_score": rng.random(n),
               }, created=False)
    for rows in scale["spines"]:
        pq.write_table(pa.table({
            "user_id": rng.integers(0, scale["users"], rows),
            "merchant_id": rng.integers(0, scale["merchants"], rows),
            "device_id": pa.array(devices[rng.integers(0, len(devices), rows)], pa.string()),
            "event_timestamp": _times(T0_US + rng.integers(0, SPAN_US + 86_400_000_000, rows)),
            "label": rng.integers(0, 2, rows),
        }), directory / f"spine_{rows}.parquet")
    (directory / "quiver.yaml").write_text(
        "project: bench\nregistry: registry\noffline_store:\n  root: data\n"
        "telemetry:\n  metrics:\n    enabled: false\n  logging:\n    access_log: false\n"
    )
    _apply(directory)
    marker.write_text(json.dumps(scale))
    print(f"generated {sum(scale['rows']):,} history rows in {time.perf_counter() - started:.0f} s",
          flush=True)


DEFINITIONS = """
from datetime import timedelta
import pyarrow.compute as pc

from quiver import (
    Bool, Entity, FeatureService, FeatureView, Field, Float64, Int32, Int64, OnDemandFeatureView,
    ParquetSource, RequestSource, String,
)
from quiver import transforms as T

user = Entity(name="user", join_keys=[Field("user_id", Int64)])
merchant = Entity(name="merchant", join_keys=[Field("merchant_id", Int64)])
device = Entity(name="device", join_keys=[Field("device_id", String)])
user_stats = FeatureView(
    name="user_stats", entities=[user], ttl=timedelta(days=30),
    source=ParquetSource("user_stats", created_timestamp_field="created"),
    schema=[Field("txn_count_1h", Int64), Field("txn_count_24h", Int64),
            Field("txn_count_7d", Int64), Field("amount_sum_24h", Float64),
            Field("amount_avg_7d", Float64), Field("distinct_merchants_7d", Int32),
            Field("last_country", String)],
)
merchant_stats = FeatureView(
    name="merchant_stats", entities=[merchant], ttl=timedelta(days=7),
    source=ParquetSource("merchant_stats", created_timestamp_field="created"),
    schema=[Field("chargeback_rate_30d", Float64), Field("txn_count_24h_m", Int64),
            Field("avg_ticket_30d", Float64), Field("refund_rate_30d", Float64),
            Field("is_high_risk", Bool), Field("age_days", Int64), Field("category_id", Int32)],
)
device_stats = FeatureView(
    name="device_stats", entities=[device], ttl=timedelta(0),
    source=ParquetSource("device_stats"),
    schema=[Field("sessions_7d", Int64), Field("fail_logins_24h", Int64),
            Field("screen_time_7d", Float64), Field("is_emulator", Bool),
            Field("os", String), Field("risk_score", Float64)],
)
fraud_model = FeatureService(name="fraud_model", features=[user_stats, merchant_stats, device_stats])


def amount_ratio(inputs):
    return {"amount_to_avg_7d": pc.divide(inputs["amount"], inputs["amount_avg_7d"])}


amount_features = OnDemandFeatureView(
    name="amount_features",
    sources=[RequestSource(name="txn", schema=[Field("amount", Float64)]),
             user_stats[["amount_avg_7d"]]],
    schema=[Field("amount_to_avg_7d", Float64)],
    function="features:amount_ratio",
)
fraud_model_scaled = FeatureService(
    name="fraud_model_scaled",
    features=[user_stats, merchant_stats, device_stats, amount_features],
    transforms=[
        T.standard_scaler("user_stats:txn_count_24h"),
        T.standard_scaler("user_stats:amount_sum_24h"),
        T.standard_scaler("user_stats:amount_avg_7d"),
        T.standard_scaler("merchant_stats:chargeback_rate_30d"),
        T.standard_scaler("device_stats:risk_score"),
    ],
)
"""
FIT_ROWS = 100_000


def with_amount(spine: pa.Table) -> pa.Table:
    """The spine with the request data the on-demand feature reads."""
    rng = np.random.default_rng(7)
    return spine.append_column("amount", pa.array(rng.lognormal(3.5, 1.0, spine.num_rows)))


def fit_scaled(directory: Path, spine: pa.Table) -> None:
    """Apply the definitions and fit the scaled service, as a user does."""
    from quiver_server.cli import main as quiver

    _apply(directory)
    path = directory / "fit_spine.parquet"
    pq.write_table(with_amount(spine.slice(0, FIT_ROWS)), path)
    if quiver(["--repo", str(directory), "fit", "fraud_model_scaled", "--spine", str(path)]) != 0:
        raise SystemExit("quiver fit failed")


def _apply(directory: Path) -> None:
    """Register the views the way a user does: a definitions file and `quiver apply`."""
    from quiver_server.config import load_config
    from quiver_server.repo import apply

    (directory / "features.py").write_text(DEFINITIONS)
    apply(load_config(directory, env={}))


# --- servers (each in its own process) -----------------------------------------------

def serve_floor(path: str) -> None:
    from pyarrow import flight

    table = pq.read_table(path)
    batches = table.combine_chunks().to_batches(max_chunksize=65_536)
    del table

    class Floor(flight.FlightServerBase):  # type: ignore[misc]
        def do_get(self, context: Any, ticket: Any) -> Any:
            # Ticket "i/n": the i-th of n equal slices, for parallel streams.
            index, count = (int(x) for x in ticket.ticket.decode().split("/"))
            share = batches[index::count]
            return flight.RecordBatchStream(pa.Table.from_batches(share, schema=batches[0].schema))

    server = Floor("grpc://127.0.0.1:0")
    _announce_and_wait(server, server.port)


def _announce_and_wait(server: Any, port: int) -> None:
    print(json.dumps({"port": port}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    server.serve()


class ServerProcess:
    """A server subprocess: its location, and its peak RSS from /proc."""

    def __init__(self, *command: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                port = json.loads(line)["port"]
                break
            if line.startswith("quiver: serving Arrow Flight on"):
                port = int(line.rsplit(":", 1)[1])
                break
        else:
            raise RuntimeError(f"server {command} exited with {self.process.wait()}")
        self.location = f"grpc://127.0.0.1:{port}"

    @classmethod
    def quiver(cls, directory: Path, profiles: bool = True) -> ServerProcess:
        """`quiver serve-flight`, as deployed (training-set profiles on, the default)."""
        cli = Path(sys.executable).with_name("quiver")
        env = {} if profiles else {"QUIVER_MONITORING__ENABLED": "false"}
        return cls(str(cli), "--repo", str(directory), "serve-flight", "--host", "127.0.0.1",
                   "--port", "0", "--health-port", "0", env=env)

    @classmethod
    def floor(cls, table_path: Path) -> ServerProcess:
        return cls(sys.executable, __file__, "--serve-floor", str(table_path))

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


# --- measurements --------------------------------------------------------------------

def pull_training_set(location: str, spine: pa.Table, service: str = "fraud_model") -> dict[str, float]:
    from quiver import TrainingClient

    with TrainingClient(location, max_workers=WORKERS) as client:
        start = time.perf_counter()
        reader = client.get_training_set_reader(spine, feature_service=service)
        first = None
        rows = size = 0
        for batch in reader:
            if first is None:
                first = time.perf_counter() - start
            rows += batch.num_rows
            size += batch.nbytes
        wall = time.perf_counter() - start
    assert rows == spine.num_rows, (rows, spine.num_rows)
    return {"wall": wall, "ttfb": first or wall, "mb": size / 1e6, "rows": rows}


def pull_floor(location: str, streams: int, rows: int) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    from pyarrow import flight

    client = flight.connect(location)
    first: list[float] = []
    start = time.perf_counter()

    def fetch(index: int) -> tuple[int, int]:
        reader = client.do_get(flight.Ticket(f"{index}/{streams}".encode()))
        count = size = 0
        for chunk in reader:
            if not first:
                first.append(time.perf_counter() - start)
            count += chunk.data.num_rows
            size += chunk.data.nbytes
        return count, size

    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(fetch, range(streams)))
    wall = time.perf_counter() - start
    client.close()
    assert sum(r[0] for r in results) == rows
    return {"wall": wall, "ttfb": first[0], "mb": sum(r[1] for r in results) / 1e6, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M history rows, spines of 100k and 400k")
    parser.add_argument("--runs", type=int, default=3, help="pulls per spine (the first is cold)")
    parser.add_argument("--serve-floor", metavar="PARQUET", help=argparse.SUPPRESS)
    parser.add_argument("--profiles-off", action="store_true",
                        help="also pull warm with training-set profiles off (monitoring.enabled)")
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0

    name = "quick" if args.quick else "full"
    scale = SCALES[name]
    directory = BENCH_DIR / name
    generate(directory, scale)
    print(f"history: {sum(scale['rows']):,} rows, 3 views, 20 features; client: {WORKERS} parallel "
          f"partitions; {os.cpu_count()} CPUs", flush=True)
    fit_scaled(directory, pq.read_table(directory / f"spine_{scale['spines'][0]}.parquet"))
    lines = []
    transformed: list[str] = []
    for rows in scale["spines"]:
        spine = pq.read_table(directory / f"spine_{rows}.parquet")
        server = ServerProcess.quiver(directory)
        try:
            runs = [pull_training_set(server.location, spine) for _ in range(max(args.runs, 2))]
            peak = server.peak_rss_mb()
            transformed.extend(transform_rounds(server.location, spine, rows))
        finally:
            server.stop()
        cold, warm = runs[0], runs[1:]
        best = min(warm, key=lambda r: r["wall"])
        median = statistics.median(r["wall"] for r in warm)
        lines.append(_row(f"quiver {rows:,} cold", cold, rows, peak))
        lines.append(_row(f"quiver {rows:,} warm", {**best, "wall": median}, rows, peak))
        if args.profiles_off:
            server = ServerProcess.quiver(directory, profiles=False)
            try:
                off = [pull_training_set(server.location, spine) for _ in range(max(args.runs, 2))]
                off_peak = server.peak_rss_mb()
            finally:
                server.stop()
            off_median = statistics.median(r["wall"] for r in off[1:])
            lines.append(_row(f"  profiles off {rows:,} warm", {**off[1], "wall": off_median},
                              rows, off_peak))
        # The floor: the same schema and size, streamed from memory by bare Flight.
        result_path = directory / f"result_{rows}.parquet"
        _save_result(server_directory=directory, spine=spine, path=result_path)
        floor = ServerProcess.floor(result_path)
        try:
            one = min((pull_floor(floor.location, 1, rows) for _ in range(2)), key=lambda r: r["wall"])
            many = min((pull_floor(floor.location, WORKERS, rows) for _ in range(2)),
                       key=lambda r: r["wall"])
            floor_peak = floor.peak_rss_mb()
        finally:
            floor.stop()
        lines.append(_row(f"floor {rows:,} 1 stream", one, rows, floor_peak))
        lines.append(_row(f"floor {rows:,} {WORKERS} streams", many, rows, floor_peak))
        for line in lines[-(5 if args.profiles_off else 4):]:
            print(line, flush=True)
    print()
    print(f"{'run':<28}{'wall s':>9}{'rows/s':>13}{'MB/s':>9}{'TTFB s':>9}{'peak RSS MB':>13}")
    for line in lines:
        print(line)
    print("\ntransformations (5 standardized features + 1 on-demand feature), warm, alternating:")
    for line in transformed:
        print(line)
    return 0


def transform_rounds(location: str, spine: pa.Table, rows: int, rounds: int = 3) -> list[str]:
    """Warm pulls of the plain and the scaled service, alternating; medians of walls."""
    scaled_spine = with_amount(spine)
    plain, scaled = [], []
    for _ in range(rounds):
        plain.append(pull_training_set(location, scaled_spine)["wall"])
        scaled.append(pull_training_set(location, scaled_spine, "fraud_model_scaled")["wall"])
    plain_rate = rows / statistics.median(plain)
    scaled_rate = rows / statistics.median(scaled)
    lines = [f"  {rows:>9,} rows: untransformed {plain_rate:>12,.0f} rows/s, scaled + on-demand "
             f"{scaled_rate:>12,.0f} rows/s = {scaled_rate / plain_rate:.0%} (target >= 70%)"]
    print(lines[0], flush=True)
    return lines


def _save_result(server_directory: Path, spine: pa.Table, path: Path) -> None:
    """The training set itself, for the floor server to hold in memory."""
    if path.exists():
        return
    server = ServerProcess.quiver(server_directory)
    try:
        from quiver import TrainingClient

        with TrainingClient(server.location, max_workers=WORKERS) as client:
            pq.write_table(client.get_training_set(spine, feature_service="fraud_model"), path)
    finally:
        server.stop()


def _row(label: str, run: dict[str, float], rows: int, peak: float) -> str:
    return (f"{label:<28}{run['wall']:>9.2f}{rows / run['wall']:>13,.0f}"
            f"{run['mb'] / run['wall']:>9,.0f}{run['ttfb']:>9.3f}{peak:>13,.0f}")


if __name__ == "__main__":
    sys.exit(main())
