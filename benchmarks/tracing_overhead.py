"""What tracing costs an online lookup: `python benchmarks/tracing_overhead.py`.

Serves the demo repo (as `make bench-online` does, reusing its setup and load
generator) from four server processes that differ only in telemetry:

- off:         no metrics, no access log, no tracing: no interceptor at all;
- default:     Prometheus metrics and the access log (at level warning, so not
               written), tracing off: what `quiver serve` does out of the box;
- sdk 0.1:     default plus tracing with the stock OpenTelemetry SDK at the
               recommended sampling ratio 0.1, its OTLP gRPC exporter sending
               spans to a real OTLP receiver in this process;
- sdk 1.0:     the same, every request sampled.

and measures 1 entity x 20 features lookups from a separate client process,
sequentially (p50/p99), in alternating rounds so drift hits every server
alike. The figure to watch is the p50 overhead of tracing at sampling 0.1 over
default (budget: under 5%). The client sends no trace context, so the server
decides: a sampled request makes four spans (server, registry resolution, store
read, response encoding), all exported; an unsampled one makes no span but
still gets trace ids (for its log lines).

On a shared or busy machine latency rounds are noisy; the server's own CPU
time per request (user + system, from /proc, including the background span
export) is the steadier measure of what telemetry costs, and is printed too.
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_online  # a sibling script, not a package
from bench_online import (
    METHOD,
    ROOT,
    build_requests,
    cpu_seconds,
    free_port,
    run_load,
    wait_ready,
)


class Receiver:
    """An OTLP/gRPC trace receiver that counts what it is sent."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans = 0
        self.requests = 0
        lock = threading.Lock()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                count = sum(len(scope.spans) for rs in request.resource_spans
                            for scope in rs.scope_spans)
                with lock:
                    receiver.spans += count
                    receiver.requests += 1
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)


def prepare_sqlite_repo(users: int) -> Path:
    """bench_online's demo repo on the embedded store (whatever options it grows)."""
    options = {"online_store": "sqlite", "hosts": "", "namespace": ""}
    accepted = inspect.signature(bench_online.prepare_repo).parameters
    return bench_online.prepare_repo(users, **{k: v for k, v in options.items() if k in accepted})


def start(repo: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="a short run for smoke testing")
    args = parser.parse_args()
    count, rounds = (300, 2) if args.quick else (args.requests, args.rounds)

    print("preparing demo repo and materializing ...", flush=True)
    bench_online.BENCH_DIR = ROOT / ".bench" / "tracing"
    repo = prepare_sqlite_repo(200 if args.quick else args.users)
    request = build_requests()["1x20"]
    receiver = Receiver()
    off = {"QUIVER_TELEMETRY__METRICS__ENABLED": "false",
           "QUIVER_TELEMETRY__LOGGING__ACCESS_LOG": "false"}
    tracing = {
        "QUIVER_TELEMETRY__TRACING__ENABLED": "true",
        "QUIVER_TELEMETRY__TRACING__EXPORTER": "otlp_grpc",
        "QUIVER_TELEMETRY__TRACING__ENDPOINT": f"http://127.0.0.1:{receiver.port}",
    }
    configs = {
        "off": off, "default": {},
        "sdk 0.1": {**tracing, "QUIVER_TELEMETRY__TRACING__SAMPLING_RATIO": "0.1"},
        "sdk 1.0": {**tracing, "QUIVER_TELEMETRY__TRACING__SAMPLING_RATIO": "1.0"},
    }
    ports = {name: free_port() for name in configs}
    servers = {name: start(repo, ports[name], env) for name, env in configs.items()}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    try:
        for round_number in range(rounds):
            order = list(configs) if round_number % 2 == 0 else list(reversed(configs))
            for name in order:
                target = f"127.0.0.1:{ports[name]}"
                cpu = cpu_seconds(servers[name].pid)
                result = run_load(target, METHOD, request, 1, count)
                if name.startswith("sdk"):
                    time.sleep(0.3)  # let the exporter catch up, so its CPU time counts here
                result["cpu_us"] = (cpu_seconds(servers[name].pid) - cpu) / (count + 200) * 1e6
                results[name].append(result)
            print(f"round {round_number + 1}/{rounds}: " + "  ".join(
                f"{name} p50 {results[name][-1]['p50_ms']:.3f} ms" for name in configs), flush=True)
        time.sleep(6)  # the batch span processor exports every 5 s
    finally:
        for proc in servers.values():
            stop(proc)
        receiver.stop()

    print(f"\n1x20 lookups, 1 client, {count} requests x {rounds} rounds "
          f"(median over rounds)\n")
    print(f"{'server':<10} {'p50 ms':>8} {'best p50':>9} {'p99 ms':>8} {'req/s':>8} "
          f"{'CPU us/req':>11}")
    summary = {}
    for name in configs:
        runs = results[name]
        summary[name] = {key: statistics.median(r[key] for r in runs)
                         for key in ("p50_ms", "p99_ms", "rps", "cpu_us")}
        summary[name]["best_p50_ms"] = min(r["p50_ms"] for r in runs)
        s = summary[name]
        print(f"{name:<10} {s['p50_ms']:>8.3f} {s['best_p50_ms']:>9.3f} {s['p99_ms']:>8.3f} "
              f"{s['rps']:>8.0f} {s['cpu_us']:>11.0f}")
    requests = {name: sum(r["n"] for r in results[name]) + 200 * rounds for name in configs}
    print(f"\nspans received over OTLP: {receiver.spans:,} in {receiver.requests} exports "
          f"({receiver.spans / (requests['sdk 0.1'] + requests['sdk 1.0']):.2f} per traced request)")
    base, bare = summary["default"], summary["off"]
    for name in ("sdk 0.1", "sdk 1.0"):
        traced = summary[name]
        # Each round measured both servers back to back: the median of the per-round
        # ratios is the steadier figure when the machine's load drifts.
        paired = statistics.median(
            t["p50_ms"] / d["p50_ms"] for t, d in zip(results[name], results["default"], strict=True)
        )
        print(f"tracing overhead, {name}: p50 {100 * (traced['p50_ms'] / base['p50_ms'] - 1):+.1f}%"
              f" (per-round median {100 * (paired - 1):+.1f}%,"
              f" best round {100 * (traced['best_p50_ms'] / base['best_p50_ms'] - 1):+.1f}%)"
              f"  p99 {100 * (traced['p99_ms'] / base['p99_ms'] - 1):+.1f}%"
              f"  server CPU {traced['cpu_us'] - base['cpu_us']:+.0f} us/request  (vs default)")
    print(f"metrics + access log overhead: p50 {100 * (base['p50_ms'] / bare['p50_ms'] - 1):+.1f}%"
          f"  (default vs off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
