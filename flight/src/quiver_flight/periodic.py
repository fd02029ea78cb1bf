"""A background job run every few seconds, and at once on request.

The Flight server sweeps expired spines and re-checks its readiness this way.
`Periodic.run_now` wakes the thread and waits for a run that started after the
call, so a caller (an operator, a test) can have the job's effect without
waiting out the interval.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Periodic:
    """Runs `action` on a daemon thread every `interval` seconds until stopped.

    Args:
        name: The thread's name, also used in logs.
        interval: Seconds between the end of one run and the start of the next.
        action: The job; an exception it raises is logged and the job goes on.
    """

    def __init__(self, name: str, interval: float, action: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.action = action
        self._condition = threading.Condition()
        self._requested = 0
        self._served = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread, letting a run in progress finish (for up to `timeout` s)."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run_now(self, timeout: float | None = None) -> bool:
        """Run the job on its thread now and wait for it; False if it did not finish in time."""
        with self._condition:
            if self._stopping or not self._thread.is_alive():
                return False
            self._requested += 1
            wanted = self._requested
            self._condition.notify_all()
            return self._condition.wait_for(
                lambda: self._served >= wanted or self._stopping, timeout
            ) and self._served >= wanted

    def _loop(self) -> None:
        while True:
            with self._condition:
                if self._requested <= self._served and not self._stopping:
                    self._condition.wait(self.interval)
                if self._stopping:
                    return
                # Requests made while the job runs wait for the next run.
                request = self._requested
            try:
                self.action()
            except Exception:
                log.exception("background job failed", job=self.name)
            with self._condition:
                self._served = request
                self._condition.notify_all()
