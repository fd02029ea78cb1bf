"""`Prefetch`: items in order, errors passed on, and both sides stop whoever goes away."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from quiver.prefetch import Prefetch


class Source:
    """Counts what was produced and whether it was closed (on which thread)."""

    def __init__(self, items: int, fail_at: int | None = None) -> None:
        self.items = items
        self.fail_at = fail_at
        self.produced = 0
        self.closed_on: str | None = None
        self.finished = threading.Event()

    def __iter__(self) -> Iterator[int]:
        try:
            for i in range(self.items):
                if i == self.fail_at:
                    raise ValueError(f"bad item {i}")
                self.produced += 1
                yield i
        finally:
            self.closed_on = threading.current_thread().name
            self.finished.set()


def test_items_arrive_in_order_and_the_source_is_closed_on_the_producer() -> None:
    source = Source(50)
    seen: list[int] = []
    assert list(Prefetch(iter(source), 3, on_item=seen.append, name="producer")) == list(range(50))
    assert seen == list(range(50))
    assert source.finished.wait(10) and source.closed_on == "producer"


def test_a_failing_source_raises_in_the_reader() -> None:
    items = Prefetch(iter(Source(10, fail_at=4)), 2, on_error=lambda e: RuntimeError(str(e)))
    assert [next(items) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="bad item 4"):
        next(items)
    with pytest.raises(StopIteration):
        next(items)


def test_closing_the_reader_stops_the_producer() -> None:
    source = Source(10_000)
    items = Prefetch(iter(source), 2)
    assert next(items) == 0
    items.close()
    assert items.join(10)
    assert source.finished.wait(10)
    assert source.produced < 10  # it stopped a few items ahead, not at the end
    assert list(items) == []


def test_a_dropped_reader_stops_the_producer() -> None:
    source = Source(10_000)
    items = Prefetch(iter(source), 2)
    next(items)
    del items
    gc.collect()
    assert source.finished.wait(10) and source.produced < 10


def test_cancellation_wakes_a_waiting_reader_and_stops_the_producer() -> None:
    cancelled = threading.Event()
    release = threading.Event()

    def slow() -> Iterator[int]:
        yield 0
        release.wait(10)  # the next item takes long; the call is cancelled meanwhile
        yield 1

    items = Prefetch(slow(), 2, cancelled=cancelled.is_set, poll_seconds=0.01)
    assert next(items) == 0
    cancelled.set()
    with pytest.raises(StopIteration):
        next(items)  # woken by the cancellation, not by an item
    release.set()
    assert items.join(10)
