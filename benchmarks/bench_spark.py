"""Spark engine benchmark: `make bench-spark` (`--quick` for a smaller run). Takes long.

Training sets: the history and spines of `bench_training` (3 views, 20
features, 10M history rows; spines of 1M and 4M rows) pulled end to end
through a Quiver Flight server on the local engine and on the Spark engine in
local mode with 1 and 2 cores, all in this run. Each spine gets a fresh
server and is pulled twice: cold (the local engine indexes the history,
Spark's JVM compiles its plans), then warm. Reported: wall time, spine
rows/s, and the peak RSS of the Flight
server's own process and, for Spark in local mode, of the JVM it started
(which holds the data and would run elsewhere on a cluster). Memory as the
history grows: the same 400k spine over the 1M-row and the 10M-row history.

Materialization: `quiver materialize` of the whole history into Aerospike
(QUIVER_TEST_AEROSPIKE or --aerospike host:port) on the local engine (one
process) and on Spark with 1 and 2 executors (local[1], local[2]); reported:
wall time (with JVM start), the job's own time, and history rows/s.

Data lives under .bench/training/ (shared with bench_training).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import BENCH_DIR, SCALES, ServerProcess, generate, pull_training_set

SPARK_CONF = {
    "spark.driver.memory": "6g",
    "spark.sql.shuffle.partitions": "16",
    "spark.ui.enabled": "false",
}
ENGINES = {
    "local": {},
    "spark 1 core": {"QUIVER_OFFLINE_STORE__ENGINE": "spark",
                     "QUIVER_OFFLINE_STORE__SPARK__MASTER": "local[1]"},
    "spark 2 cores": {"QUIVER_OFFLINE_STORE__ENGINE": "spark",
                      "QUIVER_OFFLINE_STORE__SPARK__MASTER": "local[2]"},
}


def engine_env(name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ENGINES[name], **(extra or {})}
    if name != "local":
        env["QUIVER_OFFLINE_STORE__SPARK__CONF"] = json.dumps(SPARK_CONF)
    return env


class EngineServer(ServerProcess):
    """`quiver serve-flight` on one engine."""

    def __init__(self, directory: Path, engine: str) -> None:
        cli = Path(sys.executable).with_name("quiver")
        command = [str(cli), "--repo", str(directory), "serve-flight", "--host", "127.0.0.1",
                   "--port", "0"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                        env=engine_env(engine))
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("quiver: serving Arrow Flight on"):
                self.location = f"grpc://127.0.0.1:{int(line.rsplit(':', 1)[1])}"
                break
        else:
            raise RuntimeError(f"serve-flight exited with {self.process.wait()}")

    def children_peak_mb(self) -> float:
        """Peak RSS of the processes the server started (the JVM of Spark's local mode)."""
        total = 0.0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                for line in Path(f"/proc/{child}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
        return total


def training(directory: Path, spine_path: Path, engine: str) -> list[dict[str, float]]:
    """A cold pull (index build, or JVM warm-up) and a warm one from one fresh server."""
    spine = pq.read_table(spine_path)
    server = EngineServer(directory, engine)
    try:
        runs = [pull_training_set(server.location, spine) for _ in range(2)]
        memory = {"server_mb": server.peak_rss_mb(), "jvm_mb": server.children_peak_mb()}
        return [{**run, **memory} for run in runs]
    finally:
        server.stop()


def materialize(directory: Path, engine: str, aerospike: str, executors: int) -> dict[str, float]:
    cli = Path(sys.executable).with_name("quiver")
    store = json.dumps({"type": "aerospike", "hosts": [aerospike], "namespace": "quiver"})
    extra = {"QUIVER_ONLINE_STORE": store,
             "QUIVER_OFFLINE_STORE__SPARK__WRITE_PARTITIONS": str(max(executors, 1) * 2)}
    start = time.perf_counter()
    done = subprocess.run(
        [str(cli), "--repo", str(directory), "materialize", "2020-01-01", "2030-01-01"],
        capture_output=True, text=True, env=engine_env(engine, extra), check=True,
    )
    wall = time.perf_counter() - start
    rows = job = 0.0
    for line in done.stdout.splitlines() + done.stderr.splitlines():
        found = re.search(r"\) ([\d,]+) rows read, .* in ([\d.]+) s", line)
        if found:
            rows += int(found.group(1).replace(",", ""))
            job += float(found.group(2))
    return {"wall": wall, "job": job, "rows": rows}


Result = dict[str, float]


def scaling(trained: dict[tuple[str, str], list[Result]], materialized: dict[str, Result]) -> list[str]:
    """What the figures say side by side: cores, history size, engines."""
    lines = ["scaling"]
    for (engine, label), runs in trained.items():
        if engine == "spark 2 cores" and ("spark 1 core", label) in trained:
            one, two = trained["spark 1 core", label][-1], runs[-1]
            lines.append(f"  {label}: spark 2 cores vs 1 core, warm pull {one['wall'] / two['wall']:.2f}x")
    for engine in ENGINES:
        small = trained.get((engine, "400,000 spine, 1M history"))
        large = trained.get((engine, "400,000 spine, 10M history"))
        if small and large:
            lines.append(
                f"  {engine}: Flight server peak MB, 400k spine over 10M vs 1M history: "
                f"{large[0]['server_mb']:,.0f} / {small[0]['server_mb']:,.0f} = "
                f"{large[0]['server_mb'] / small[0]['server_mb']:.2f}x"
                + (f" (JVM {large[0]['jvm_mb']:,.0f} / {small[0]['jvm_mb']:,.0f} MB)"
                   if large[0]["jvm_mb"] else "")
            )
    if "spark 1 core" in materialized and "spark 2 cores" in materialized:
        one, two = materialized["spark 1 core"], materialized["spark 2 cores"]
        lines.append(f"  materialization: spark 2 executors vs 1, job time {one['job'] / two['job']:.2f}x")
    if "local" in materialized and "spark 2 cores" in materialized:
        local, two = materialized["local"], materialized["spark 2 cores"]
        lines.append(f"  materialization: spark 2 executors vs the local engine's one process, "
                     f"job time {local['job'] / two['job']:.2f}x")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M history rows, spines of 100k and 400k")
    parser.add_argument("--memory", action="store_true",
                        help="only the same 400k spine over 1M and 10M history rows, local vs spark "
                        "2 cores (the Flight server's memory as the history grows)")
    parser.add_argument("--aerospike", default=os.environ.get("QUIVER_TEST_AEROSPIKE", ""),
                        help="host:port of an Aerospike server for the materialization part")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    name = "quick" if args.quick else "full"
    directory = BENCH_DIR / name
    generate(directory, SCALES[name])
    small = BENCH_DIR / "quick"
    generate(small, SCALES["quick"])
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    header = f"{'training set':<46}{'wall s':>9}{'rows/s':>12}{'server MB':>11}{'JVM MB':>9}"
    lines = [header]
    trained: dict[tuple[str, str], list[Result]] = {}
    materialized: dict[str, Result] = {}
    engines = ["local", "spark 2 cores"] if args.memory else list(ENGINES)
    if not args.skip_training:
        runs = [] if args.memory else [
            (directory, directory / f"spine_{rows}.parquet", f"{rows:,} spine")
            for rows in SCALES[name]["spines"]
        ]
        # The same spine over a tenth of the history: memory as the history grows.
        runs.append((small, small / "spine_400000.parquet", "400,000 spine, 1M history"))
        if name == "full":
            runs.append((directory, small / "spine_400000.parquet", "400,000 spine, 10M history"))
        for data, spine, label in runs:
            for engine in engines:
                results = training(data, spine, engine)
                trained[engine, label] = results
                for kind, result in zip(("cold", "warm"), results, strict=True):
                    line = (f"{engine + ', ' + label + ', ' + kind:<46}{result['wall']:>9.2f}"
                            f"{result['rows'] / result['wall']:>12,.0f}"
                            f"{result['server_mb']:>11,.0f}{result['jvm_mb']:>9,.0f}")
                    lines.append(line)
                    print(line, flush=True)
    if args.aerospike and not args.memory:
        lines.append(f"{'materialize into Aerospike':<46}{'wall s':>9}{'job s':>9}{'rows/s (job)':>14}")
        for engine, executors in (("local", 0), ("spark 1 core", 1), ("spark 2 cores", 2)):
            result = materialize(directory, engine, args.aerospike, executors)
            materialized[engine] = result
            line = (f"{engine:<46}{result['wall']:>9.1f}{result['job']:>9.1f}"
                    f"{result['rows'] / max(result['job'], 1e-9):>14,.0f}")
            lines.append(line)
            print(line, flush=True)
    elif not args.memory:
        lines.append("materialization: skipped (set QUIVER_TEST_AEROSPIKE or --aerospike)")
    print()
    print("\n".join(lines + scaling(trained, materialized)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
