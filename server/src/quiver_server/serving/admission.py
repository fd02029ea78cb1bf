"""Admission of heavy requests, so large callers cannot starve small lookups.

A server process answers on a few handler threads. Without a limit, a handful
of clients sending 1,000-entity lookups keep every thread busy and a 1-entity
lookup waits in the queue behind them (measured in docs/benchmarks.md). A
request is *heavy* when it carries more than `serving.heavy_request_entities`
entities (or pushed rows, or deleted keys); at most `serving.max_heavy_requests`
of them run at once, and one more is refused at once with RESOURCE_EXHAUSTED,
which tells the caller to back off and retry. Light requests are never refused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from quiver.errors import ResourceExhaustedError


class HeavyRequestLimit:
    """Counts heavy requests in flight in this process and refuses one too many."""

    def __init__(self, heavy_entities: int, max_heavy: int) -> None:
        self.heavy_entities = heavy_entities
        self.max_heavy = max_heavy
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        """Heavy requests in flight now."""
        return self._running

    @contextmanager
    def admit(self, entities: int, what: str) -> Iterator[None]:
        """Run the body for a request of `entities`, or raise ResourceExhaustedError.

        Args:
            entities: Entities, rows or keys the request carries.
            what: What they are, for the message ("entities", "rows", "keys").
        """
        if entities <= self.heavy_entities:
            yield
            return
        with self._lock:
            if self._running >= self.max_heavy:
                raise ResourceExhaustedError(
                    f"{self._running} requests of more than {self.heavy_entities} {what} are "
                    f"running on this server (serving.max_heavy_requests = {self.max_heavy}); "
                    f"retry with backoff or send fewer {what} per request",
                    reason="TOO_MANY_HEAVY_REQUESTS",
                    metadata={"max_heavy_requests": str(self.max_heavy)},
                )
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
