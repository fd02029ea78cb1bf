"""Smoke test of an installed Quiver: both servers start on a demo repo and answer.

Writes a small demo repo, applies and materializes it, starts `quiver serve` and
`quiver serve-flight` on free loopback ports (each announces its port on a ready
line), checks gRPC health, one online lookup and one training set over Flight,
then stops both with SIGTERM and expects them to exit cleanly. Every wait is
bounded. It needs nothing but the installed distribution (no extras), so it
proves what `pip install .` gives: the Docker image's build runs it, and so does a
slow test against a fresh virtualenv.

    python scripts/smoke_servers.py [--quiver PATH_TO_quiver] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pyarrow as pa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver import OnlineClient, TrainingClient

READY = re.compile(r"quiver: serving (?:gRPC|Arrow Flight) on [^\s:]+:(\d+)")


class Server:
    """A `quiver` server process whose output is read on a thread, to find its ready line."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            match = READY.search(line)
            if match:
                return int(match.group(1))
        self.stop(5)
        raise SystemExit(f"{' '.join(self.command[1:])}: no ready line; output:\n{''.join(self.output)}")

    def stop(self, timeout: float) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise SystemExit(f"{' '.join(self.command[1:])}: did not stop on SIGTERM") from None


def wait_serving(target: str, service: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)  # polling readiness, bounded by the deadline
    raise SystemExit(f"{target}: {service or 'server'} not SERVING within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiver", default=shutil.which("quiver") or "quiver",
                        help="the quiver command to test (default: the one on PATH)")
    parser.add_argument("--timeout", type=float, default=90.0, help="bound of each wait, seconds")
    args = parser.parse_args()
    quiver = args.quiver
    env = dict(os.environ)
    # No metrics endpoints and a free health port: nothing else may be listening on
    # the default ports.
    env["QUIVER_TELEMETRY__METRICS__ENABLED"] = "false"
    with tempfile.TemporaryDirectory(prefix="quiver-smoke-") as tmp:
        repo = str(Path(tmp) / "repo")
        for step in (
            ["init-demo", repo, "--users", "20", "--merchants", "5", "--days", "2"],
            ["--repo", repo, "apply"],
            ["--repo", repo, "materialize-incremental", "now"],
        ):
            done = subprocess.run([quiver, *step], env=env, timeout=args.timeout,
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"quiver {' '.join(step)} failed:\n{done.stdout}{done.stderr}")
        serving = Server([quiver, "--repo", repo, "serve", "--host", "127.0.0.1", "--port", "0"], env)
        flight = Server([quiver, "--repo", repo, "serve-flight", "--host", "127.0.0.1", "--port", "0",
                         "--health-port", "0"], env)
        try:
            target = f"127.0.0.1:{serving.port(args.timeout)}"
            wait_serving(target, "quiver.serving.v1.FeatureServingService", args.timeout)
            with OnlineClient(target, timeout=args.timeout) as client:
                statuses = client.get_online_features(
                    feature_service="fraud_model_v1", entities={"user_id": [1], "merchant_id": [1]}
                ).statuses("txn_count_24h")
            print(f"quiver serve on {target}: SERVING, lookup statuses {statuses}")
            location = f"grpc://127.0.0.1:{flight.port(args.timeout)}"
            spine = pa.table({
                "user_id": pa.array([1, 2], pa.int64()),
                "merchant_id": pa.array([1, 2], pa.int64()),
                "event_timestamp": pa.array([datetime.now(UTC)] * 2, pa.timestamp("us", tz="UTC")),
            })
            with TrainingClient(location) as training:
                table = training.get_training_set(spine, feature_service="fraud_model_v1")
            print(f"quiver serve-flight on {location}: training set of {table.num_rows} rows, "
                  f"{table.num_columns} columns")
            if table.num_rows != 2:
                raise SystemExit("the training set does not have one row per spine row")
        finally:
            codes = {"serve": serving.stop(args.timeout), "serve-flight": flight.stop(args.timeout)}
        if any(codes.values()):
            raise SystemExit(f"servers exited with {codes} after SIGTERM")
    print("smoke test passed: both servers started, answered and stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
