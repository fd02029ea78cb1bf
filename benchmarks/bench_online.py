"""Online serving benchmark: `make bench-online`.

Serves the demo repo (20 features over 3 views) from the embedded SQLite store
in a separate server process and measures, from separate load-generator
processes on loopback:

- p50/p99 latency for 1 entity x 20 features and 100 entities x 20 features,
  sequentially (1 client) and with 4 concurrent clients;
- throughput (requests/s) for 1 entity with `--workers 1` and `--workers 2`;
- the floor: a bare gRPC echo server (no Quiver code) answering the same
  request bytes with a payload of the same size, measured in the same run;
- the cost of access control: 1 x 20 p50 with auth off next to an authenticated
  (OIDC JWT, RS256, verified against a JWKS) and authorized lookup, in
  alternating rounds against two servers of the same repo;
- transformations: 1 entity from `fraud_model_scaled` (the same 20 features,
  5 of them standardized with fitted parameters, plus one on-demand feature
  computed from the request's amount) against `fraud_model_v1`, in
  alternating rounds from one client; the p50 overhead is the target, printed
  with each round's ratio. `--only transforms` (`make bench-transforms`) runs
  this arm alone.

Figures are medians of what this machine did in this run; compare ratios, not
absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench" / "online"
METHOD = "/quiver.serving.v1.FeatureServingService/GetOnlineFeatures"
ECHO_METHOD = "/bench.Echo/Echo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(target: str, timeout: float = 30.0) -> None:
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=timeout)
    channel.close()


# --- the floor: a bare echo server -------------------------------------------------

def _echo_server(port: int, payloads: dict[int, bytes], threads: int) -> None:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        # Answer with a payload as large as Quiver's answer to this request size.
        return payloads.get(len(request), request)

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(echo)},  # bytes in, bytes out
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


# --- load generation ----------------------------------------------------------------

def _client(target: str, method: str, request: bytes, count: int, warmup: int,
            start_at: float, out: Any, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(method)  # raw bytes: measures the server, not client decoding
    for _ in range(warmup):
        call(request, timeout=10, metadata=metadata)
    while time.time() < start_at:
        time.sleep(0.001)
    latencies = []
    begin = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter_ns()
        call(request, timeout=10, metadata=metadata)
        latencies.append(time.perf_counter_ns() - t0)
    elapsed = time.perf_counter() - begin
    channel.close()
    out.put((latencies, elapsed))


def run_load(target: str, method: str, request: bytes, clients: int, count: int,
             metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 1.5
    procs = [ctx.Process(target=_client,
                         args=(target, method, request, count, 200, start_at, queue, metadata))
             for _ in range(clients)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    latencies = sorted(lat for lats, _ in results for lat in lats)
    wall = max(elapsed for _, elapsed in results)
    n = len(latencies)
    return {
        "p50_ms": latencies[n // 2] / 1e6,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] / 1e6,
        "rps": n / wall,
        "n": n,
    }


# --- setup ---------------------------------------------------------------------------

def prepare_repo(users: int, online_store: str, hosts: str, namespace: str) -> Path:
    sys.path.insert(0, str(ROOT / "server" / "src"))
    from quiver_server.config import load_config
    from quiver_server.demo_repo import write_demo_repo
    from quiver_server.materialize import materialize_range
    from quiver_server.repo import apply

    if BENCH_DIR.exists():
        import shutil

        shutil.rmtree(BENCH_DIR)
    repo = write_demo_repo(BENCH_DIR, users=users, merchants=200, days=2)
    if online_store == "aerospike":
        # A fresh project per run, so records of earlier runs (newer events) never
        # shadow this run's writes.
        text = (repo / "quiver.yaml").read_text()
        text = re.sub(
            r"online_store:\n  type: sqlite\n  path: .*\n",
            f"online_store:\n  type: aerospike\n  hosts: {json.dumps(hosts.split(','))}\n"
            f"  namespace: {namespace}\n  read_timeout_ms: 1000\n",
            text,
        )
        text = text.replace("project: fraud_detection", f"project: bench_{uuid.uuid4().hex[:8]}")
        (repo / "quiver.yaml").write_text(text)
    config = load_config(repo, env={})
    if online_store == "aerospike":
        from quiver_server.online.factory import open_online_store

        store = open_online_store(config)
        deadline = time.monotonic() + 10
        while not store.healthy():
            if time.monotonic() > deadline:
                raise SystemExit(f"no Aerospike cluster answers at {hosts}")
            time.sleep(0.2)
        store.close()
    apply(config)
    end = datetime.now(UTC) + timedelta(seconds=1)
    materialize_range(config, end - timedelta(days=30), end)
    fit_scaled(repo, users, end)
    return repo


def fit_scaled(repo: Path, users: int, end: datetime) -> None:
    """Fit `fraud_model_scaled` on labelled events, as `quiver fit` does."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from quiver_server.cli import main as quiver

    rng = random.Random(3)
    count = 5000
    path = repo / "labels.parquet"
    pq.write_table(pa.table({
        "user_id": [rng.randrange(1, users + 1) for _ in range(count)],
        "merchant_id": [rng.randrange(1, 201) for _ in range(count)],
        "event_timestamp": pa.array([end - timedelta(minutes=rng.randrange(2880))
                                     for _ in range(count)], pa.timestamp("us", tz="UTC")),
        "amount": [rng.lognormvariate(3.5, 1.0) for _ in range(count)],
    }), path)
    if quiver(["--repo", str(repo), "fit", "fraud_model_scaled", "--spine", str(path)]) != 0:
        raise SystemExit("quiver fit failed")


def build_requests() -> dict[str, bytes]:
    from quiver.serving.v1 import serving_service_pb2 as pb
    from quiver.types.v1 import value_pb2

    def request(n: int, service: str = "fraud_model_v1") -> bytes:
        req = pb.GetOnlineFeaturesRequest(feature_service=service)
        req.entities["user_id"].CopyFrom(
            value_pb2.Values(int64_values=value_pb2.Int64Array(values=range(1, n + 1))))
        req.entities["merchant_id"].CopyFrom(
            value_pb2.Values(int64_values=value_pb2.Int64Array(values=[1 + i % 200 for i in range(n)])))
        if service == "fraud_model_scaled":
            req.request_data["amount"].CopyFrom(
                value_pb2.Values(double_values=value_pb2.DoubleArray(values=[42.5] * n)))
        return req.SerializeToString()

    return {"1x20": request(1), "100x20": request(100),
            "1x20 scaled": request(1, "fraud_model_scaled")}


def transform_overhead(target: str, requests: dict[str, bytes], count: int,
                       rounds: int) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """p50 of plain and scaled 1x20 lookups, in alternating rounds (medians of rounds),
    and each round's p50 ratio (scaled / plain), so load that drifts between rounds
    shows as spread instead of bias."""
    plain: list[dict[str, float]] = []
    scaled: list[dict[str, float]] = []
    for i in range(rounds):
        # Alternate which arm goes first, so neither always follows the other.
        order = ("1x20", "1x20 scaled") if i % 2 == 0 else ("1x20 scaled", "1x20")
        for name in order:
            result = run_load(target, METHOD, requests[name], 1, count)
            (plain if name == "1x20" else scaled).append(result)

    def median(runs: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(r[key] for r in runs) for key in runs[0]}

    ratios = [s["p50_ms"] / p["p50_ms"] for p, s in zip(plain, scaled, strict=True)]
    return median(plain), median(scaled), ratios


def print_transform_overhead(plain: dict[str, float], scaled: dict[str, float],
                             ratios: list[float]) -> None:
    print(f"\ntransformations (5 standardized features + 1 on-demand feature, 1x20): p50 "
          f"{scaled['p50_ms']:.3f} ms vs {plain['p50_ms']:.3f} ms untransformed, overhead "
          f"{(scaled['p50_ms'] / plain['p50_ms'] - 1) * 100:+.1f}% (target <= 15%); "
          f"per-round overhead median {(statistics.median(ratios) - 1) * 100:+.1f}%")
    print("  per round: " + " ".join(f"{(r - 1) * 100:+.1f}%" for r in ratios))


def store_reads(repo: Path, count: int) -> list[tuple[str, str, dict[str, float]]]:
    """The store's own batch read for the same requests, in-process: the part of
    the served latency that is not Quiver's."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from store_read_bench import measure_batch_read, service_reads

    from quiver_server.config import load_config
    from quiver_server.online.factory import open_online_store

    config = load_config(repo, env={})
    store = open_online_store(config)
    rows = []
    try:
        for n in (1, 100):
            entities = {"user_id": list(range(1, n + 1)), "merchant_id": [1 + i % 200 for i in range(n)]}
            reads = service_reads(config, "fraud_model_v1", entities)
            rows.append((f"store read {n}x20", f"{config.online_store.type}, in-process",
                         measure_batch_read(store, reads, count)))
    finally:
        store.close()
    return rows


def start_server(repo: Path, port: int, workers: int,
                 env_overrides: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "QUIVER_TELEMETRY__LOGGING__LEVEL": "warning", **(env_overrides or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quiver_server.cli", "--repo", str(repo), "serve",
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL,
    )
    wait_ready(f"127.0.0.1:{port}")
    time.sleep(1.0 if workers > 1 else 0.2)  # let every worker bind
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


# --- access control -----------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), 0.0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



def auth_env(directory: Path) -> tuple[dict[str, str], str]:
    """Settings turning OIDC auth on (keys in a JWKS file) and a token for the demo repo's
    `fraud-model` principal, which its permissions.py lets READ_ONLINE fraud_model_v1."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench", use="sig", alg="RS256")
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    issuer = "https://issuer.bench.invalid"
    now = int(time.time())
    token = jwt.encode({"iss": issuer, "aud": "quiver", "sub": "fraud-model", "iat": now,
                        "exp": now + 3600}, key, algorithm="RS256", headers={"kid": "bench"})
    oidc = {"issuer": issuer, "audience": "quiver", "jwks_url": jwks.as_uri()}
    return {"QUIVER_AUTH__ENABLED": "true", "QUIVER_AUTH__OIDC": json.dumps(oidc)}, token


def auth_overhead(repo: Path, request: bytes, count: int, rounds: int) -> dict[str, list[float]]:
    """p50 of 1x20 lookups with auth off and on, in alternating rounds (drift hits both),
    and each server's CPU microseconds per request (steadier on a busy machine)."""
    env, token = auth_env(BENCH_DIR)
    metadata = (("authorization", f"Bearer {token}"),)
    off_port, on_port = free_port(), free_port()
    # Both run at once, so each needs its own metrics port.
    off = start_server(repo, off_port, workers=1,
                       env_overrides={"QUIVER_TELEMETRY__METRICS__PORT": str(free_port())})
    p50: dict[str, list[float]] = {"off": [], "on": [], "cpu_off": [], "cpu_on": []}
    on = None
    try:
        on = start_server(repo, on_port, workers=1,
                          env_overrides={**env, "QUIVER_TELEMETRY__METRICS__PORT": str(free_port())})
        check = grpc.insecure_channel(f"127.0.0.1:{on_port}")
        check.unary_unary(METHOD)(request, timeout=10, metadata=metadata)  # authorized, or raise
        check.close()
        arms = [("off", off, off_port, ()), ("on", on, on_port, metadata)]
        for round_number in range(rounds):
            # Which arm goes first alternates, so a burst of load on the machine does not
            # always land on the same one.
            for name, proc, port, md in arms if round_number % 2 == 0 else arms[::-1]:
                cpu = cpu_seconds(proc.pid)
                result = run_load(f"127.0.0.1:{port}", METHOD, request, 1, count, md)
                p50[name].append(result["p50_ms"])
                # Warm-up calls count too: CPU per call made.
                p50[f"cpu_{name}"].append((cpu_seconds(proc.pid) - cpu) / (count + 200) * 1e6)
    finally:
        stop(off)
        if on is not None:
            stop(on)
    return p50


def auth_path_us(repo: Path, token: str, env: dict[str, str], count: int = 20_000) -> float:
    """In-process cost of what the auth interceptor and the lookup's policy check add to a
    call once the token and the decision are cached: microseconds per call."""
    from quiver import Action
    from quiver_server.auth.access import AccessControl
    from quiver_server.auth.authenticator import build_authenticator
    from quiver_server.auth.principal import CallAccess, enter_call, exit_call
    from quiver_server.config import load_config
    from quiver_server.registry.store import RegistryStore

    config = load_config(repo, env=env)
    authenticator = build_authenticator(config)
    assert authenticator is not None
    snapshot = RegistryStore(config.registry_path).latest()
    refs = snapshot.resolve(feature_service="fraud_model_v1")
    access = AccessControl(enabled=True)
    header = f"Bearer {token}"

    def one() -> None:
        call = CallAccess(authenticator.authenticate(header), "GetOnlineFeatures", "grpc")
        entered = enter_call(call)
        access.check_features(snapshot, Action.READ_ONLINE, refs, service="fraud_model_v1")
        exit_call(entered)

    one()  # verifies the token and fills both caches
    begin = time.perf_counter()
    for _ in range(count):
        one()
    return (time.perf_counter() - begin) / count * 1e6


def transforms_only(args: argparse.Namespace, count: int) -> int:
    """The transformations arm alone, against one server (as in the full run)."""
    print(f"preparing demo repo on {args.online_store} and materializing ...", flush=True)
    repo = prepare_repo(200 if args.quick else args.users,
                        args.online_store, args.aerospike_hosts, args.aerospike_namespace)
    requests = build_requests()
    port = free_port()
    server = start_server(repo, port, workers=1)
    try:
        plain, scaled, ratios = transform_overhead(
            f"127.0.0.1:{port}", requests, count, rounds=3 if args.quick else args.transform_rounds)
    finally:
        stop(server)
    print(f"\n{'scenario':<24} {'load':<26} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
    for name, r in (("quiver 1x20 plain", plain), ("quiver 1x20 scaled+odfv", scaled)):
        print(f"{name:<24} {'1 client, alternating':<26} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
              f"{r['rps']:>9.0f}")
    print_transform_overhead(plain, scaled, ratios)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per client per scenario")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="a short run for smoke testing")
    parser.add_argument("--online-store", choices=["sqlite", "aerospike"], default="sqlite")
    parser.add_argument("--aerospike-hosts", default="127.0.0.1:3000", help="comma-separated")
    parser.add_argument("--aerospike-namespace", default="quiver")
    parser.add_argument("--auth-rounds", type=int, default=5,
                        help="alternating auth off/on rounds for the access-control arm")
    parser.add_argument("--transform-rounds", type=int, default=5,
                        help="alternating plain/transformed rounds for the transformations arm")
    parser.add_argument("--only", choices=["transforms"],
                        help="run one arm alone (transforms: plain vs scaled+on-demand 1x20)")
    args = parser.parse_args()
    count = 300 if args.quick else args.requests
    if args.only == "transforms":
        return transforms_only(args, count)

    print(f"preparing demo repo on {args.online_store} and materializing ...", flush=True)
    repo = prepare_repo(
        200 if args.quick else args.users,
        args.online_store, args.aerospike_hosts, args.aerospike_namespace,
    )
    requests = build_requests()

    rows: list[tuple[str, str, dict[str, float]]] = []
    rows.extend(store_reads(repo, count))
    payloads: dict[int, bytes] = {}
    port = free_port()
    server = start_server(repo, port, workers=1)
    target = f"127.0.0.1:{port}"
    try:
        channel = grpc.insecure_channel(target)
        for req in requests.values():
            payloads[len(req)] = channel.unary_unary(METHOD)(req, timeout=10)
        channel.close()
        for name in ("1x20", "100x20"):
            for clients in (1, 4):
                rows.append((f"quiver {name}", f"{clients} client(s), 1 worker",
                             run_load(target, METHOD, requests[name], clients, count)))
        plain, scaled, ratios = transform_overhead(
            target, requests, count, rounds=3 if args.quick else args.transform_rounds)
        rows.append(("quiver 1x20 plain", "1 client, alternating", plain))
        rows.append(("quiver 1x20 scaled+odfv", "1 client, alternating", scaled))
    finally:
        stop(server)

    echo_port = free_port()
    ctx = multiprocessing.get_context("spawn")
    # Same handler-thread count as `quiver serve` by default, so the floor is like for like.
    echo = ctx.Process(target=_echo_server, args=(echo_port, payloads, 4))
    echo.start()
    echo_target = f"127.0.0.1:{echo_port}"
    try:
        wait_ready(echo_target)
        for name in ("1x20", "100x20"):
            for clients in (1, 4):
                rows.append((f"echo floor {name}", f"{clients} client(s)",
                             run_load(echo_target, ECHO_METHOD, requests[name], clients, count)))
    finally:
        echo.terminate()
        echo.join()

    port2 = free_port()
    server = start_server(repo, port2, workers=2)
    try:
        rows.append(("quiver 1x20", "4 client(s), 2 workers",
                     run_load(f"127.0.0.1:{port2}", METHOD, requests["1x20"], 4, count)))
    finally:
        stop(server)

    print(f"\nresponse sizes: 1x20 {len(payloads[len(requests['1x20'])])} B, "
          f"100x20 {len(payloads[len(requests['100x20'])])} B; {count} requests per client\n")
    print(f"{'scenario':<24} {'load':<26} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
    for name, load, r in rows:
        rps = f"{r['rps']:>9.0f}" if "rps" in r else f"{'':>9}"
        print(f"{name:<24} {load:<26} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {rps}")
    by = {(name, load): r for name, load, r in rows}
    print_transform_overhead(plain, scaled, ratios)
    p50 = auth_overhead(repo, requests["1x20"], count, 2 if args.quick else args.auth_rounds)
    env, token = auth_env(BENCH_DIR)
    path_us = auth_path_us(repo, token, env)
    off, on = statistics.median(p50["off"]), statistics.median(p50["on"])
    print(f"\naccess control, 1x20, 1 client, {len(p50['on'])} alternating rounds of {count}: "
          f"p50 auth off {off:.3f} ms, authenticated (OIDC JWT) and authorized {on:.3f} ms, "
          f"overhead {100 * (on - off) / off:+.1f}% (target <= 5%)")
    print("  per round off: " + " ".join(f"{v:.3f}" for v in p50["off"]))
    print("  per round on:  " + " ".join(f"{v:.3f}" for v in p50["on"]))
    cpu_off, cpu_on = statistics.median(p50["cpu_off"]), statistics.median(p50["cpu_on"])
    print(f"  server CPU per request: off {cpu_off:.0f} us, on {cpu_on:.0f} us "
          f"({100 * (cpu_on - cpu_off) / cpu_off:+.1f}%)")
    print(f"  auth path in-process (cached token and decision): {path_us:.1f} us per call, "
          f"{100 * path_us / (off * 1000):.1f}% of the auth-off p50")
    print("\nratio to the echo floor (quiver / echo):")
    for name in ("1x20", "100x20"):
        for clients in (1, 4):
            q = by[(f"quiver {name}", f"{clients} client(s), 1 worker")]
            e = by[(f"echo floor {name}", f"{clients} client(s)")]
            print(f"  {name:<7} {clients} client(s): p50 x{q['p50_ms'] / e['p50_ms']:.2f}  "
                  f"p99 x{q['p99_ms'] / e['p99_ms']:.2f}  throughput x{q['rps'] / e['rps']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
