"""A thread-safe, least-recently-used cache with a byte budget.

Concurrent requests for a missing key wait for one build instead of each
building it. A value larger than the whole budget is returned but not kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteBudgetCache(Generic[V]):
    """Values with known sizes, evicted least recently used first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get_or_build(self, key: Hashable, build: Callable[[], tuple[V, int]]) -> V:
        """The cached value of `key`, else `build()` -> (value, size in bytes)."""
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    return entry[0]
                building = self._building.get(key)
                if building is None:
                    building = threading.Lock()
                    building.acquire()
                    self._building[key] = building
                    break
            # Another thread is building it: wait, then look again.
            with building:
                pass
        try:
            value, size = build()
            self.put(key, value, size)
            return value
        finally:
            with self._lock:
                del self._building[key]
            building.release()

    def put(self, key: Hashable, value: V, size: int) -> None:
        """Keep `value` unless it alone exceeds the budget."""
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, size)
            self._bytes += size
            self._evict()

    def _evict(self) -> None:
        # Called with the lock held; the newest entry fits, so it survives.
        while self._bytes > self.max_bytes and self._entries:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted
