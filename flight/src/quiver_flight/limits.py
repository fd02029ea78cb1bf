"""Bounds on how many calls of one kind a server runs at once.

A training-set stream holds a thread, a few batches and the history it joins
for as long as its client reads; an upload holds a thread and a file. Past
``flight.max_concurrent_streams`` streams or ``flight.max_concurrent_uploads``
uploads, a new call is refused at once with RESOURCE_EXHAUSTED (clients retry,
or fetch another endpoint from another replica) rather than queued behind calls
that may last minutes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from quiver.errors import ResourceExhaustedError

T = TypeVar("T")


class CallSlots:
    """At most `limit` calls of one kind at once.

    Args:
        what: The calls counted, for messages ("training-set streams").
        setting: The config field that sets the limit ("max_concurrent_streams").
        limit: How many at once.
    """

    def __init__(self, what: str, setting: str, limit: int) -> None:
        self.what = what
        self.setting = setting
        self.limit = limit
        self._in_use = 0
        self._condition = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    def acquire(self) -> None:
        """Take a slot.

        Raises:
            ResourceExhaustedError: every slot is taken.
        """
        with self._condition:
            if self._in_use >= self.limit:
                raise ResourceExhaustedError(
                    f"this server already runs {self.limit} {self.what}, its limit "
                    f"(flight.{self.setting}); retry shortly, or use another replica",
                    reason="TOO_MANY_CALLS", metadata={self.setting: str(self.limit)},
                )
            self._in_use += 1
            self._condition.notify_all()

    def release(self) -> None:
        with self._condition:
            self._in_use -= 1
            self._condition.notify_all()

    def wait_for(self, predicate: Callable[[int], bool], timeout: float | None = None) -> bool:
        """Wait until `predicate(slots in use)` holds; False if it did not within `timeout`."""
        with self._condition:
            return self._condition.wait_for(lambda: predicate(self._in_use), timeout)

    def claim(self) -> Claim:
        """Take a slot, given back when the ``with`` block ends unless `Claim.hold` passed it on.

        Raises:
            ResourceExhaustedError: every slot is taken.
        """
        self.acquire()
        return Claim(self.release)


class Claim:
    """A taken slot (see `CallSlots.claim`)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def hold(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, holding the slot until they are exhausted, fail or are dropped."""
        release, self._release = self._release, None
        assert release is not None, "the slot was given back already"
        return _Holding(iter(items), release)


class _Holding(Iterator[T]):
    """An iterator that gives its slot back once, however it ends.

    A class rather than a generator: a generator dropped before its first step
    never runs its ``finally``, and a stream whose client went away before the
    first batch is dropped exactly so.
    """

    def __init__(self, items: Iterator[T], release: Callable[[], None]) -> None:
        self._items = items
        self._release: Callable[[], None] | None = release

    def __next__(self) -> T:
        try:
            return next(self._items)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
        finally:
            release()

    def __del__(self) -> None:
        self.close()
