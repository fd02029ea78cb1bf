"""The online store's own batch-read time, for `bench_online.py`.

Serving a request costs the store's batch read plus Quiver's own work (gRPC,
decoding, planning, grading, encoding). Timing the store call alone, on the
same reads a request makes and in the same run, shows how much of the served
latency is Quiver's. Used from bench_online.py::

    from store_read_bench import measure_batch_read, service_reads

    reads = service_reads(config, "fraud_model_v1", {"user_id": [1], "merchant_id": [1]})
    print(measure_batch_read(store, reads, 3000))

Run alone against a repo that is applied and materialized (any online store)::

    python benchmarks/store_read_bench.py --repo .bench/online/repo
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def service_reads(
    config: Any, feature_service: str, entities: Mapping[str, Sequence[Any]]
) -> list[Any]:
    """The `ViewRead`s a GetOnlineFeatures request for `feature_service` makes.

    Args:
        config: The repo's `QuiverConfig`, applied.
        feature_service: The service requested.
        entities: Join key name -> values, as in the request.
    """
    from quiver_server.registry.store import RegistryStore
    from quiver_server.serving.online_read import build_plan, view_reads

    plan = build_plan(RegistryStore(config.registry_path).latest(), [], feature_service, False)
    return view_reads(plan, entities)


def measure_batch_read(
    store: Any, reads: Sequence[Any], n: int, warmup: int = 100
) -> dict[str, float]:
    """Time `store.read(reads)` `n` times, one after another.

    Returns p50/p99/mean in milliseconds, reads per second and `n`, the same keys
    as `bench_online.run_load` reports, plus `errors`: reads that failed (e.g.
    past `read_timeout_ms` on a loaded machine); they count in the latencies.
    """
    from quiver.errors import QuiverError

    for _ in range(warmup):
        with contextlib.suppress(QuiverError):
            store.read(reads)
    took: list[float] = []
    errors = 0
    clock = time.perf_counter
    began = clock()
    for _ in range(n):
        start = clock()
        try:
            store.read(reads)
        except QuiverError:
            errors += 1
        took.append(clock() - start)
    elapsed = clock() - began
    took.sort()
    return {
        "p50_ms": took[len(took) // 2] * 1e3,
        "p99_ms": took[min(len(took) - 1, int(len(took) * 0.99))] * 1e3,
        "mean_ms": sum(took) / len(took) * 1e3,
        "rps": n / elapsed,
        "n": n,
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", required=True, help="an applied, materialized feature repo")
    parser.add_argument("--service", default="fraud_model_v1")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "server" / "src"))
    from quiver_server.config import load_config
    from quiver_server.online.factory import open_online_store

    config = load_config(args.repo)
    store = open_online_store(config)
    try:
        print(f"store {store!r}, service {args.service!r}")
        for n in (1, 100):
            entities = {
                "user_id": list(range(1, n + 1)),
                "merchant_id": [1 + i % 200 for i in range(n)],
            }
            reads = service_reads(config, args.service, entities)
            r = measure_batch_read(store, reads, args.requests)
            print(f"store batch read {n}x20: p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
                  f"{r['rps']:.0f} reads/s  {r['errors']} errors")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
