"""The registry version a long-running server answers from.

Servers poll the registry directory in the background and swap in a new
snapshot when `quiver apply` or materialization stores one, so requests never
pay for the check. A version that does not verify is never served: the
provider keeps (or, at startup, loads) the newest version that does, and logs
the bad one.
"""

from __future__ import annotations

import threading

import structlog

from quiver.errors import UnavailableError
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore

log = structlog.get_logger(__name__)


class RegistryProvider:
    """Holds the newest registry version; a server may start before the first apply."""

    def __init__(self, store: RegistryStore, refresh_seconds: float = 2.0) -> None:
        self._store = store
        self._snapshot: Snapshot | None = None
        self._refresh_seconds = refresh_seconds
        self._checked = 0  # the newest version number looked at
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    @property
    def version(self) -> int:
        return self._snapshot.version if self._snapshot is not None else 0

    def current(self) -> Snapshot:
        """The served version; UnavailableError until a version that verifies exists."""
        snapshot = self._snapshot
        if snapshot is None:
            bad = sorted(self._store.bad_versions())
            raise UnavailableError(
                f"no registry version verifies (bad: {', '.join(map(str, bad))}): "
                f"run `quiver registry history`"
                if bad else "no feature registry yet: run `quiver apply`",
                reason="REGISTRY_EMPTY",
            )
        return snapshot

    def refresh(self) -> bool:
        """Load the newest version that verifies if it changed; returns whether it did."""
        latest = self._store.latest_version()
        if latest == 0 or latest == self._checked:
            return False
        snapshot = self._store.latest_good()
        # Only now: a read that failed (an OSError) is tried again at the next poll.
        self._checked = latest
        if snapshot is None or snapshot.version != latest:
            for version, problem in sorted(self._store.bad_versions().items()):
                if version > (snapshot.version if snapshot else 0):
                    log.error(
                        "registry version does not verify; not serving it",
                        bad_version=version, problem=problem,
                        serving_version=snapshot.version if snapshot else None,
                    )
        if snapshot is None or snapshot.version == self.version:
            return False
        self._snapshot = snapshot
        log.info("registry loaded", version=snapshot.version)
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
                log.exception("registry refresh failed; keeping version", version=self.version)
