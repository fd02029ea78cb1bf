"""The README's main job: a fraud-detection feature store, end to end, on local defaults.

Writes the demo feature repo (Parquet history + definitions), applies it,
materializes it into the embedded SQLite online store, starts `quiver serve`,
looks up features for a few users with the Python client, prints them, and
shuts the server down with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver import OnlineClient

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
    run("--repo", str(repo), "materialize", start.isoformat(), end.isoformat())

    port = free_port()
    target = f"127.0.0.1:{port}"
    print(f"\n$ quiver serve --port {port}", flush=True)
    server = subprocess.Popen(
        [*QUIVER, "--repo", str(repo), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "QUIVER_TELEMETRY__LOGGING__FORMAT": "console"},
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
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    print(f"\nquiver serve stopped cleanly (exit code {code}).")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
