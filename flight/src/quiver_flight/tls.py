"""A Flight server whose TLS certificate follows its files.

pyarrow takes the certificate when a Flight server is built and Arrow binds
its port without SO_REUSEPORT, so a new certificate needs a new server. When
the files change (checked every `flight.tls.reload_check_seconds`), the
running server is shut down in the background -- its listener closes at
once, while the streams in flight carry on to their end -- and a new server
with the new certificate binds the same port right away (the bind is retried
for up to ten seconds while the old listener closes, and again at the next
check if that fails). Clients reconnect on their
next call. A call that tries to connect in the few milliseconds between the
two gets UNAVAILABLE; measured on loopback, the gap is about 2 ms.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from pyarrow import flight

from quiver_server.auth.tls import KeyPair, ReloadingKeyPair

log = structlog.get_logger(__name__)

_REBIND_SECONDS = 10.0

Build = Callable[[str, KeyPair | None], flight.FlightServerBase]


class FlightServerHandle:
    """The current Flight server of a location, rebuilt when its certificate changes.

    It stands in for the server: attributes it does not have are the current
    server's (``streams``, ``training``, ...), and it owns the health service,
    which outlives the servers a rotation replaces.

    Args:
        build: Makes a started server at a location, with the key pair to serve.
        host: Listen address.
        port: Port; 0 picks one (kept across reloads).
        pairs: The certificate files, or None for plaintext.
    """

    def __init__(self, build: Build, host: str, port: int, pairs: ReloadingKeyPair | None) -> None:
        self._build = build
        self._host = host
        self._pairs = pairs
        self._scheme = "grpc+tls" if pairs is not None else "grpc"
        # None only between shutting the old server down and binding the new one.
        self.current: flight.FlightServerBase | None = build(
            f"{self._scheme}://{host}:{port}", pairs.current if pairs else None
        )
        self.port: int = self.current.port
        self.health: Any = None
        self._draining: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if pairs is not None:
            threading.Thread(target=self._watch, name="flight-tls-reload", daemon=True).start()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the handle lacks: those of the server it stands in for.
        current = self.__dict__.get("current")
        if current is None:
            raise AttributeError(name)
        return getattr(current, name)

    def __enter__(self) -> FlightServerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def attach_health(self, health: Any) -> None:
        """Start `health` (anything with start() and stop(grace)); it stops with the handle."""
        self.health = health
        health.start()

    def reload(self, *, force: bool = False) -> bool:
        """Serve the files' certificate if it changed; returns whether a new server was bound.

        Raises:
            Exception: the port could not be bound again within the retry window;
                the next call (the watcher's next check) tries again.
        """
        if self._pairs is None:
            return False
        pair = self._pairs.refresh(force=force)
        with self._lock:
            if self._stop.is_set() or (pair is None and self.current is not None):
                return False
            if self.current is not None:
                self._drain(self.current)
                self.current = None
            pair = self._pairs.current
            self.current = self._rebind(pair)
        log.info("flight server rebuilt with the new certificate", port=self.port,
                 subject=pair.subject)
        return True

    def _drain(self, server: flight.FlightServerBase) -> None:
        """Shut `server` down in the background: its listener closes now, its calls finish."""
        drain = threading.Thread(target=server.shutdown, name="flight-drain", daemon=True)
        drain.start()
        self._draining.append(drain)

    def _rebind(self, pair: KeyPair) -> flight.FlightServerBase:
        location = f"{self._scheme}://{self._host}:{self.port}"
        deadline = time.monotonic() + _REBIND_SECONDS
        while True:
            try:
                return self._build(location, pair)
            except Exception:
                # The old listener has not closed yet.
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                time.sleep(0.005)

    def _watch(self) -> None:
        assert self._pairs is not None
        while not self._stop.wait(self._pairs.interval):
            try:
                self.reload()
            except Exception:
                log.exception("flight server not rebuilt; trying again at the next check",
                              port=self.port)

    def shutdown(self) -> None:
        """Stop accepting calls and wait for the running ones (also of replaced servers)."""
        if self._stop.is_set():
            return  # a Flight server must be shut down once only
        self._stop.set()
        if self.health is not None:
            self.health.stop(0)
        with self._lock:
            current = self.current  # kept: its attributes stay readable after shutdown
        if current is not None:
            current.shutdown()
        for drain in self._draining:
            drain.join()
