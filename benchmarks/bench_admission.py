"""Small lookups while large callers hammer the server: `make bench-admission`.

Serves the demo repo (20 features over 3 views, SQLite) from a separate server
process. A load process runs 8 threads that send 1,000-entity lookups back to
back; meanwhile this process sends 1-entity lookups one after another and
records their latency. Three scenarios, each on a fresh server:

- idle: no load (the floor);
- unlimited: heavy requests admitted without limit (serving.heavy_request_entities
  set above 1,000, so no request counts as heavy);
- limited: the defaults (more than 100 entities is heavy, at most 2 at once; the
  rest answered RESOURCE_EXHAUSTED at once).

Printed: p50/p99 of the 1-entity lookups and what the heavy callers got
(answered, refused). Every loop is bounded in count and time; only loopback.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench" / "admission"
READY = re.compile(r"quiver: serving gRPC on [^\s:]+:(\d+)")


def request_bytes(entities: int) -> bytes:
    from quiver.serving.v1 import serving_service_pb2 as pb

    request = pb.GetOnlineFeaturesRequest(feature_service="fraud_model_v1")
    request.entities["user_id"].int64_values.values.extend(range(1, entities + 1))
    request.entities["merchant_id"].int64_values.values.extend(1 + i % 200 for i in range(entities))
    return request.SerializeToString()


def _load(target: str, threads: int, seconds: float, counts: Any) -> None:
    """Heavy callers: `threads` threads sending 1,000-entity lookups until time is up."""
    payload = request_bytes(1000)
    stop = time.monotonic() + seconds

    def run() -> None:
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary("/quiver.serving.v1.FeatureServingService/GetOnlineFeatures")
            while time.monotonic() < stop:
                try:
                    call(payload, timeout=10)
                    with counts.get_lock():
                        counts[0] += 1
                except grpc.RpcError as exc:
                    with counts.get_lock():
                        counts[1 if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else 2] += 1
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        time.sleep(0.005)  # back off, as a well-behaved client would

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def start_server(repo: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "quiver_server.cli", "--repo", str(repo), "serve",
         "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = READY.search(line)
        if match:
            # Keep reading what the server prints, so a full pipe never blocks it.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            target = f"127.0.0.1:{match.group(1)}"
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
            return process, target
        if not line and process.poll() is not None:
            break
    process.kill()
    raise SystemExit("quiver serve did not start")


def probe(target: str, n: int) -> list[float]:
    payload = request_bytes(1)
    out = []
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/quiver.serving.v1.FeatureServingService/GetOnlineFeatures")
        for _ in range(20):
            call(payload, timeout=10)
        for _ in range(n):
            began = time.perf_counter()
            call(payload, timeout=10)
            out.append((time.perf_counter() - began) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def scenario(repo: Path, name: str, env: dict[str, str], heavy: int, n: int) -> None:
    process, target = start_server(repo, env)
    try:
        counts = multiprocessing.get_context("spawn").Array("q", 3)
        load = None
        if heavy:
            load = multiprocessing.get_context("spawn").Process(
                target=_load, args=(target, heavy, 600.0, counts), daemon=True)
            load.start()
            time.sleep(2.0)  # let the heavy callers fill the server's threads
        began = time.monotonic()
        latencies = probe(target, n)
        elapsed = time.monotonic() - began
        if load is not None:
            load.terminate()
            load.join(10)
        answered, refused, failed = counts[0], counts[1], counts[2]
        heavy_text = (f"heavy: {answered / elapsed:,.0f} answered/s, {refused / elapsed:,.0f} refused/s"
                      f"{f', {failed} failed' if failed else ''}" if heavy else "heavy: none")
        print(f"{name:<10} 1-entity p50 {pct(latencies, 50):7.2f} ms  p99 {pct(latencies, 99):7.2f} ms"
              f"  ({n} lookups)  {heavy_text}", flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=400, help="1-entity lookups per scenario")
    parser.add_argument("--heavy-threads", type=int, default=8)
    args = parser.parse_args()
    from quiver_server.config import load_config
    from quiver_server.demo_repo import write_demo_repo
    from quiver_server.materialize import materialize_incremental
    from quiver_server.repo import apply

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    repo = write_demo_repo(BENCH_DIR / f"repo-{os.getpid()}", users=2000, merchants=200, days=2)
    config = load_config(repo, env={})
    apply(config)
    materialize_incremental(config, datetime.now(UTC))
    base = {**os.environ, "QUIVER_TELEMETRY__METRICS__ENABLED": "false",
            "QUIVER_TELEMETRY__LOGGING__ACCESS_LOG": "false"}
    print(f"1-entity lookups while {args.heavy_threads} threads send 1,000-entity lookups "
          f"(server: 4 handler threads, SQLite):", flush=True)
    scenario(repo, "idle", base, 0, args.lookups)
    scenario(repo, "unlimited", {**base, "QUIVER_SERVING__HEAVY_REQUEST_ENTITIES": "100000"},
             args.heavy_threads, args.lookups)
    scenario(repo, "limited", base, args.heavy_threads, args.lookups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
