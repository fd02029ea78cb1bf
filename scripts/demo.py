"""The README's main job: a fraud-detection feature store, end to end, on local defaults.

Writes the demo feature repo (Parquet history + definitions), applies it,
materializes it into the embedded SQLite online store in two batches -- the
second one with one feature shifted, as an upstream bug would -- runs
`quiver monitor report`, which flags the shifted feature and writes an HTML
report, fits the transforms of the `fraud_model_scaled` service on labelled
events (`quiver fit`), starts `quiver serve`, looks up features for a few users
with the Python client -- stored, standardized and on-demand ones, computed
from the transaction amount sent with the lookup -- and prints them and the
drift metrics its Prometheus endpoint exports, then starts `quiver serve-flight`,
pulls a point-in-time-correct training set for a few labelled events, pulls the
scaled service's training set for the users looked up (same entities, same
time, same amounts) and checks it holds exactly the online answer, and shuts
both servers down with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver import OnlineClient, TrainingClient
from quiver_server.demo_repo import SHIFTED_FEATURE, write_shifted_batch

ROOT = Path(__file__).resolve().parent.parent
QUIVER = [sys.executable, "-m", "quiver_server.cli"]


def run(*args: str) -> None:
    print(f"\n$ quiver {' '.join(args)}", flush=True)
    subprocess.run([*QUIVER, *args], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(target: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"quiver serve exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"server at {target} not serving after {timeout}s")


def show(response_dict: dict[str, list[object]], statuses: dict[str, list[str]]) -> None:
    users = response_dict["user_id"]
    merchants = response_dict["merchant_id"]
    names = [n for n in response_dict if n not in ("user_id", "merchant_id")]
    width = max(len(n) for n in names)
    for i, (user, merchant) in enumerate(zip(users, merchants, strict=True)):
        print(f"\nuser_id={user} merchant_id={merchant}")
        for name in names:
            value = response_dict[name][i]
            status = statuses[name][i]
            shown = f"{value:.2f}" if isinstance(value, float) else repr(value)
            mark = "" if status == "PRESENT" else f"   [{status}]"
            print(f"  {name:<{width}}  {shown}{mark}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default=str(ROOT / "demo-repo"), help="where to write the demo repo")
    args = parser.parse_args()
    repo = Path(args.repo)
    if repo.exists():
        shutil.rmtree(repo)

    run("init-demo", str(repo))
    run("--repo", str(repo), "apply")
    end = datetime.now(UTC) + timedelta(seconds=1)
    start = end - timedelta(days=30)
    # Two batches: history up to yesterday, then the last day, in which an
    # upstream bug multiplied one feature by 3.
    yesterday = (end - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    run("--repo", str(repo), "materialize", start.isoformat(), yesterday.isoformat())
    shifted = write_shifted_batch(repo)
    print(f"\nWrote a second batch with {SHIFTED_FEATURE} x3 for every user: {shifted.name}")
    run("--repo", str(repo), "materialize", yesterday.isoformat(), end.isoformat())
    report = repo / "drift-report.html"
    run("--repo", str(repo), "monitor", "report", "--out", str(report))
    labels = write_labels(repo, end)
    run("--repo", str(repo), "fit", "fraud_model_scaled", "--spine", str(labels))

    port = free_port()
    metrics_port = free_port()
    target = f"127.0.0.1:{port}"
    print(f"\n$ quiver serve --port {port}", flush=True)
    server = subprocess.Popen(
        [*QUIVER, "--repo", str(repo), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "QUIVER_TELEMETRY__LOGGING__FORMAT": "console",
             "QUIVER_TELEMETRY__METRICS__PORT": str(metrics_port),
             "QUIVER_TELEMETRY__METRICS__HOST": "127.0.0.1"},
    )
    try:
        wait_until_serving(target, server)
        with OnlineClient(target) as client:
            print("\nFeature service fraud_model_v1 for three users (user 999999 does not exist):")
            result = client.get_online_features(
                feature_service="fraud_model_v1",
                entities={"user_id": [1, 2, 999999], "merchant_id": [10, 20, 30]},
            )
            data = result.to_dict()
            show(data, {name: result.statuses(name) for name in result.feature_names})
            by_ref = client.get_online_features(
                features=["user_transaction_stats:txn_count_24h", "user_profile:credit_score"],
                entities={"user_id": [1, 2, 3]},
            )
            print("\nBy reference:", by_ref.to_dict())
            scaled_at = datetime.now(UTC)
            scaled = client.get_online_features(
                feature_service="fraud_model_scaled",
                entities={"user_id": SCALED_USERS, "merchant_id": SCALED_MERCHANTS},
                request_data={"amount": SCALED_AMOUNTS},
            )
            print(f"\nFeature service fraud_model_scaled (transform parameters version "
                  f"{scaled.transform_version}), with the transaction amount sent in the request:")
            for name in SHOWN_SCALED:
                print(f"  {name:<22} {scaled.values(name)}")
        show_drift_metrics(metrics_port)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    print(f"\nquiver serve stopped cleanly (exit code {code}).")
    flight_code = training_set(repo, end, scaled.to_arrow(), scaled_at)
    return 0 if code == 0 and flight_code == 0 else 1


# The features of the labelled events' training set (and of the dataset stored from it).
DEMO_FEATURES = ["user_transaction_stats:txn_count_24h", "user_transaction_stats:txn_amount_sum_24h",
                 "user_profile:credit_score", "merchant_stats:is_high_risk"]

# The scaled lookup: two transactions, and the 5 standardized features plus the
# on-demand amount ratio to show (of the service's 21 columns).
SCALED_USERS = [1, 2]
SCALED_MERCHANTS = [10, 20]
SCALED_AMOUNTS = [42.0, 950.0]
SHOWN_SCALED = ["txn_count_24h", "txn_amount_sum_24h", "txn_amount_avg_7d", "credit_score",
                "chargeback_rate_30d", "amount_to_avg_7d"]


def write_labels(repo: Path, end: datetime) -> Path:
    """Labelled card transactions of the last three days, to fit the transforms on."""
    rng = random.Random(11)
    count = 2000
    table = pa.table({
        "user_id": [rng.randrange(1, 1001) for _ in range(count)],
        "merchant_id": [rng.randrange(1, 201) for _ in range(count)],
        "event_timestamp": pa.array(
            [end - timedelta(minutes=rng.randrange(3 * 24 * 60)) for _ in range(count)],
            pa.timestamp("us", tz="UTC"),
        ),
        "amount": [round(rng.lognormvariate(3.5, 1.0), 2) for _ in range(count)],
        "is_fraud": [rng.random() < 0.02 for _ in range(count)],
    })
    path = repo / "labels.parquet"
    pq.write_table(table, path)
    return path


def show_drift_metrics(port: int) -> None:
    """What Prometheus scrapes (and the chart's alert rules read) about the drift."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    print(f"\nDrift metrics of {SHIFTED_FEATURE} at {url} (alert QuiverFeatureDrift fires "
          f"when a score is over its threshold):")
    for line in text.splitlines():
        if f'feature="{SHIFTED_FEATURE}"' in line and line.startswith(
            ("quiver_feature_drift_score", "quiver_feature_drift_threshold",
             "quiver_feature_drift_status")
        ):
            print(f"  {line}")


def training_set(repo: Path, end: datetime, online: pa.Table, online_at: datetime) -> int:
    """Pull training sets over Arrow Flight; the scaled one must equal the online answer."""
    port = free_port()
    print(f"\n$ quiver serve-flight --port {port}", flush=True)
    server = subprocess.Popen(
        [*QUIVER, "--repo", str(repo), "serve-flight", "--host", "127.0.0.1", "--port", str(port),
         "--health-port", "0"],
        env={**os.environ, "QUIVER_TELEMETRY__LOGGING__LEVEL": "warning"},
    )
    try:
        # Labelled events: (user, merchant, when, is_fraud). The first two ask
        # about the same user at different times and get different features.
        spine = pa.table({
            "user_id": [1, 1, 2, 999999],
            "merchant_id": [10, 10, 20, 30],
            "event_timestamp": pa.array(
                [end - timedelta(days=3), end - timedelta(hours=2), end - timedelta(hours=1),
                 end - timedelta(hours=1)],
                pa.timestamp("us", tz="UTC"),
            ),
            "is_fraud": [False, True, False, False],
        })
        deadline = time.monotonic() + 30
        while True:
            try:
                with TrainingClient(f"grpc://127.0.0.1:{port}") as client:
                    table = client.get_training_set(
                        spine,
                        features=DEMO_FEATURES,
                        name="fraud_demo",
                    )
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        print("\nTraining set (point-in-time correct; user 999999 has no history):")
        for row in table.to_pylist():
            when = row.pop("event_timestamp")
            print(f"  {when:%Y-%m-%d %H:%M}  " + "  ".join(f"{k}={v}" for k, v in row.items()))
        identical = scaled_training_set(port, online, online_at)
        reproduced = training_dataset(port, spine, table)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    print(f"\nquiver serve-flight stopped cleanly (exit code {code}).")
    if reproduced:
        run("--repo", str(repo), "lineage", "fraud_demo")
    return code if identical and reproduced else 1


def training_dataset(port: int, spine: pa.Table, pulled: pa.Table) -> bool:
    """Store the labelled events' training set as a dataset and pull it again by name."""
    with TrainingClient(f"grpc://127.0.0.1:{port}") as client:
        created = client.create_training_dataset(
            "fraud_demo", spine, features=DEMO_FEATURES,
            description="labelled card transactions of the demo",
        )
        again = client.get_training_dataset("fraud_demo", created.version)
    same = bool(again.table.equals(created.table) and created.table.equals(pulled))
    print(f"\nTraining dataset fraud_demo v{created.version} (registry version "
          f"{created.record.registry_version}, {created.table.num_rows} rows) pulled again by "
          f"name: identical cell for cell: {same}")
    return same


def scaled_training_set(port: int, online: pa.Table, online_at: datetime) -> bool:
    """The scaled service's training rows for the online lookup's entities, time and amounts."""
    spine = pa.table({
        "user_id": SCALED_USERS, "merchant_id": SCALED_MERCHANTS,
        "event_timestamp": pa.array([online_at] * len(SCALED_USERS), pa.timestamp("us", tz="UTC")),
        "amount": SCALED_AMOUNTS,
    })
    with TrainingClient(f"grpc://127.0.0.1:{port}") as client:
        table = client.get_training_set(spine, feature_service="fraud_model_scaled")
    version = table.schema.metadata[b"quiver.transform_version"].decode()
    print(f"\nTraining set of fraud_model_scaled for the same transactions (transform parameters "
          f"version {version}):")
    for name in SHOWN_SCALED:
        print(f"  {name:<22} {table[name].to_pylist()}")
    features = table.schema.names[len(spine.schema):]
    identical = all(table[n].to_pylist() == online[n].to_pylist() for n in features)
    print(f"\nAll {len(features)} columns identical to the online answer: {identical}")
    return identical


if __name__ == "__main__":
    sys.exit(main())
