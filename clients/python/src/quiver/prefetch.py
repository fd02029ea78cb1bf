"""`Prefetch`: an iterator computed on a helper thread a few items ahead of its reader.

The training client reads Flight partitions this way (several at once, each a
few batches ahead), and the Flight server computes a partition's next batch
while the current one is sent. One implementation serves both, because the hard
part is stopping: whichever side goes away, the other must not wait forever.

- The reader stops (`close`, or the iterator is dropped): the producer stops at
  its next item and closes its source in its own thread.
- The work is cancelled (`cancelled()` turns true, e.g. a Flight client hung up):
  a reader waiting for an item wakes within `poll_seconds`, stops the producer
  and ends the iteration. Only the reader asks `cancelled()`: it may belong to a
  call (a Flight ServerCallContext) that must not be touched once the call is
  over, and the producer can outlive the call by a moment.
- The source fails: the reader raises its exception (through `on_error`).
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Prefetch"]

T = TypeVar("T")

_DONE = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Channel:
    """What the producer shares with the reader. The producer holds no reference
    to the `Prefetch` itself, so a reader that is simply dropped stops it too."""

    def __init__(self, depth: int, cancelled: Callable[[], bool] | None, poll: float) -> None:
        self.queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.cancelled = cancelled
        self.poll = poll

    def reader_stops(self) -> bool:
        if self.cancelled is not None and self.cancelled():
            self.stop.set()
        return self.stop.is_set()

    def put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=self.poll)
                return True
            except queue.Full:
                continue
        return False


def _produce(source: Iterator[object], channel: _Channel) -> None:
    try:
        for item in source:
            if not channel.put(item):
                return
        channel.put(_DONE)
    except BaseException as exc:  # handed to the reader, which raises it
        channel.put(_Failed(exc))
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


class Prefetch(Iterator[T], Generic[T]):
    """Iterate `source` on a daemon thread, at most `depth` items ahead of the reader.

    The thread runs in a copy of the creating context, so context variables
    (tracing, logging context) follow the work.

    Args:
        source: The items; closed (if it has ``close``) on the producing thread.
        depth: Items computed ahead of the one being read.
        cancelled: Polled by the reader while it waits; true ends the iteration.
        on_item: Called with each item on the reader's side before it is returned.
        on_error: Maps the source's exception to the one the reader raises.
        name: The thread's name.
        poll_seconds: How often a waiting side checks `cancelled` and `close`.
    """

    def __init__(
        self,
        source: Iterable[T],
        depth: int,
        *,
        cancelled: Callable[[], bool] | None = None,
        on_item: Callable[[T], None] | None = None,
        on_error: Callable[[BaseException], BaseException] | None = None,
        name: str = "quiver-prefetch",
        poll_seconds: float = 0.1,
    ) -> None:
        self._channel = _Channel(depth, cancelled, poll_seconds)
        self._on_item = on_item
        self._on_error = on_error
        self._finished = False
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(_produce, iter(source), self._channel), name=name,
            daemon=True,
        )
        self._thread.start()

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        channel = self._channel
        while True:
            try:
                item = channel.queue.get(timeout=channel.poll)
                break
            except queue.Empty:
                # Stopped, cancelled, or the producer ended without a last item
                # (it stops only when told to): nothing more will come.
                if channel.reader_stops() or (not self._thread.is_alive() and channel.queue.empty()):
                    self.close()
                    raise StopIteration from None
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failed):
            self.close()
            error = item.error
            raise (self._on_error(error) if self._on_error else error) from None
        if self._on_item is not None:
            self._on_item(item)  # type: ignore[arg-type]
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the producer; later reads end the iteration."""
        self._finished = True
        self._channel.stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the producing thread to end; returns whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._channel.stop.set()
