"""A client that hangs up mid-stream frees the server's do_get: its threads and memory come back.

Each do_get computes its batches on a helper thread a couple of batches ahead
(`quiver.prefetch.Prefetch`). When the client cancels, the producer must stop
and the handler must return; otherwise every cancelled pull keeps a handler
thread and its batches for good, and a shutdown waits for them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from pyarrow import flight

from quiver import TrainingClient
from quiver_server.config import QuiverConfig

CANCELLED_PULLS = 60


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def os_threads() -> int:
    """Threads of this process, Python's and gRPC's own."""
    return len(os.listdir("/proc/self/task"))


def wait_until(condition: Callable[[], bool], seconds: float = 60.0) -> bool:
    """Poll `condition` until it holds; False if it still does not after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def server(applied_demo: QuiverConfig) -> Iterator[tuple[flight.FlightServerBase, str]]:
    from quiver_flight.server import create_flight_server

    # Small batches, so a partition is many batches and the producer is mid-way
    # (blocked on a full queue) when the client goes away.
    config = applied_demo.model_copy(update={
        "flight": applied_demo.flight.model_copy(update={"batch_rows": 4096}),
    })
    instance, port = create_flight_server(config)
    yield instance, f"grpc://127.0.0.1:{port}"
    instance.shutdown()


def spine(rows: int) -> pa.Table:
    now = datetime.now(UTC)
    return pa.table({
        "user_id": pa.array([1 + i % 50 for i in range(rows)], pa.int64()),
        "merchant_id": pa.array([1 + i % 10 for i in range(rows)], pa.int64()),
        "event_timestamp": pa.array([now - timedelta(minutes=i % 4000) for i in range(rows)],
                                    pa.timestamp("us", tz="UTC")),
    })


def test_cancelled_streams_release_threads_and_memory(
    server: tuple[flight.FlightServerBase, str],
) -> None:
    instance, location = server
    with TrainingClient(location) as client:
        info = client.plan(spine(200_000), feature_service="fraud_model_v1",
                           partition_rows=200_000)
    [endpoint] = info.endpoints
    raw = flight.FlightClient(location)

    def pull_one_batch_and_hang_up() -> None:
        reader = raw.do_get(endpoint.ticket)
        assert reader.read_chunk().data.num_rows > 0
        reader.cancel()

    pull_one_batch_and_hang_up()  # warm caches (history index, features) before measuring
    assert wait_until(lambda: not _do_get_threads())
    threads, arrow_bytes, rss = os_threads(), pa.total_allocated_bytes(), rss_bytes()

    for _ in range(CANCELLED_PULLS):
        pull_one_batch_and_hang_up()

    assert wait_until(lambda: not _do_get_threads()), _do_get_threads()
    # gRPC's server may keep a few more pool threads after a burst of calls; a
    # leak keeps one blocked handler per cancelled pull.
    assert wait_until(lambda: os_threads() - threads < 12), (os_threads(), threads)
    assert wait_until(lambda: pa.total_allocated_bytes() - arrow_bytes < 64 << 20), (
        pa.total_allocated_bytes() - arrow_bytes)
    # Before the fix: +53 threads and about +490 MB for 60 cancels.
    assert rss_bytes() - rss < 256 << 20, rss_bytes() - rss

    # Nothing is left for a shutdown to wait for.
    stopper = threading.Thread(target=instance.shutdown, daemon=True)
    stopper.start()
    stopper.join(60)
    assert not stopper.is_alive()
    raw.close()


def _do_get_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "quiver-do-get"]
