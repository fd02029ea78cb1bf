"""The registry version a long-running server answers from.

Servers poll the registry directory in the background and swap in a new
snapshot when `quiver apply` or materialization stores one, so requests never
pay for the check.
"""

from __future__ import annotations

import threading

import structlog

from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore

log = structlog.get_logger(__name__)


class RegistryProvider:
    def __init__(self, store: RegistryStore, refresh_seconds: float = 2.0) -> None:
        self._store = store
        self._snapshot = store.latest()
        self._refresh_seconds = refresh_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> Snapshot:
        return self._snapshot

    def refresh(self) -> bool:
        """Load the newest version if it changed; returns whether it did."""
        latest = self._store.latest_version()
        if latest == self._snapshot.version:
            return False
        self._snapshot = self._store.latest()
        log.info("registry reloaded", version=self._snapshot.version)
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="registry-refresh", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_seconds):
            try:
                self.refresh()
            except Exception:
                log.exception("registry refresh failed; keeping version", version=self._snapshot.version)
