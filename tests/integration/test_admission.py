"""Heavy requests past serving.max_heavy_requests are refused; light lookups still run.

Requests are held in flight deterministically: the store blocks heavy reads on an
Event until the test releases them (no timings).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from quiver import OnlineClient
from quiver.errors import ResourceExhaustedError
from quiver_server.config import QuiverConfig
from quiver_server.online.base import ViewRead, ViewReadResult
from quiver_server.online.sqlite import SqliteOnlineStore
from quiver_server.serving.server import create_server

HEAVY = 100


class GatedStore(SqliteOnlineStore):
    """A real SQLite store whose heavy reads wait until the test opens the gate."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()

    def read(self, reads: Sequence[ViewRead]) -> list[ViewReadResult]:
        if any(len(r.keys) > HEAVY for r in reads):
            self.entered.release()
            assert self.gate.wait(60), "the test never opened the gate"
        return super().read(reads)


@pytest.fixture
def gated(applied_demo: QuiverConfig) -> Iterator[tuple[str, GatedStore]]:
    serving = applied_demo.serving.model_copy(
        update={"heavy_request_entities": HEAVY, "max_heavy_requests": 2, "max_workers_threads": 4}
    )
    config = applied_demo.model_copy(update={"serving": serving})
    store = GatedStore(config.resolve("data/online.db"))
    app, port = create_server(config, "127.0.0.1", 0, store=store)
    with app:
        try:
            yield f"127.0.0.1:{port}", store
        finally:
            store.gate.set()


def lookup(client: OnlineClient, n: int) -> Any:
    return client.get_online_features(
        features=["user_profile:age"], entities={"user_id": list(range(n))}, timeout=60
    )


def test_heavy_request_over_the_limit_is_refused_while_light_ones_run(
    gated: tuple[str, GatedStore],
) -> None:
    target, store = gated
    with OnlineClient(target) as client, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(lookup, client, HEAVY + 100) for _ in range(2)]
        for _ in held:  # both heavy lookups are inside the store now
            assert store.entered.acquire(timeout=60)
        with pytest.raises(ResourceExhaustedError) as info:
            lookup(client, HEAVY + 1)
        assert info.value.reason == "TOO_MANY_HEAVY_REQUESTS"
        assert "serving.max_heavy_requests = 2" in info.value.message
        with pytest.raises(ResourceExhaustedError):
            client.delete_entities({"user_id": list(range(HEAVY + 1))})
        rows = {
            "merchant_id": list(range(HEAVY + 1)),
            "event_timestamp": [datetime.now(UTC)] * (HEAVY + 1),
            "merchant_category": ["x"] * (HEAVY + 1), "chargeback_rate_30d": [0.1] * (HEAVY + 1),
            "merchant_txn_count_24h": [1] * (HEAVY + 1), "avg_ticket_30d": [1.0] * (HEAVY + 1),
            "is_high_risk": [False] * (HEAVY + 1),
        }
        with pytest.raises(ResourceExhaustedError):
            client.push("merchant_stats", rows)
        # A light lookup is never refused and is answered while the heavy ones wait.
        assert lookup(client, 1).statuses("age") == ["NOT_FOUND"]
        assert lookup(client, HEAVY).statuses("age") == ["NOT_FOUND"] * HEAVY
        store.gate.set()
        for future in held:
            assert future.result(timeout=60).statuses("age") == ["NOT_FOUND"] * (HEAVY + 100)
        # Finished heavy requests give their places back.
        assert len(lookup(client, HEAVY + 1).statuses("age")) == HEAVY + 1
        assert client.push("merchant_stats", rows).rows == HEAVY + 1
