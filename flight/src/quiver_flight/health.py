"""The Flight server's health, as the standard gRPC health service on a side port.

An Arrow Flight server hosts only the Flight service, so `serve-flight` runs
``grpc.health.v1.Health`` on its own small port (``flight.health_port``, 8816),
for Kubernetes gRPC probes and tools such as ``grpc_health_probe``:

- ``""`` (the process): SERVING while it runs -- liveness;
- ``arrow.flight.protocol.FlightService``: SERVING while the server can serve
  training sets -- readiness: the newest registry version loads, and the
  offline store root can be listed. Checked at start and every
  ``flight.health_check_seconds``; NOT_SERVING from SIGTERM on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from quiver.errors import DefinitionError
from quiver_flight.periodic import Periodic

log = structlog.get_logger(__name__)

FLIGHT_SERVICE = "arrow.flight.protocol.FlightService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FlightHealth:
    """A health server whose readiness follows `check`.

    Args:
        check: Returns None when the Flight server can serve, else why not.
        address: ``host:port`` to listen on (port 0: any free port).
        interval: Seconds between checks.
    """

    def __init__(self, check: Callable[[], str | None], address: str, interval: float) -> None:
        self._check = check
        self.servicer = health.HealthServicer()
        # No port sharing: a second server on a taken port must fail, not split the probes.
        self.server = grpc.server(futures.ThreadPoolExecutor(2, thread_name_prefix="health"),
                                  options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises when the port is taken
            self.port = 0
        if self.port == 0:
            raise DefinitionError(
                f"flight.health_port: cannot listen on {address} (is the port in use?)"
            )
        self.monitor = Periodic("quiver-flight-health", interval, self.check)
        self.ready: bool | None = None

    def start(self) -> None:
        self.servicer.set("", SERVING)
        self.check()
        self.server.start()
        self.monitor.start()

    def check(self) -> bool:
        """Check readiness now and report it; True when ready."""
        try:
            problem = self._check()
        except Exception as exc:  # a check that fails says "not ready", never stops the server
            problem = f"readiness check failed: {exc}"
        ready = problem is None
        if ready != self.ready:
            log.log(20 if ready else 30, "readiness changed", ready=ready, problem=problem)
        self.ready = ready
        self.servicer.set(FLIGHT_SERVICE, SERVING if ready else NOT_SERVING)
        return ready

    def stop_serving(self) -> None:
        """Report NOT_SERVING for good (from SIGTERM on), while calls drain."""
        self.monitor.stop()
        self.servicer.enter_graceful_shutdown()

    def stop(self, grace: float | None = None) -> None:
        self.stop_serving()
        self.server.stop(grace)
