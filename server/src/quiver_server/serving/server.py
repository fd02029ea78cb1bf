"""The online serving process: gRPC server factory, worker processes, shutdown.

`create_server` builds a started-but-not-blocking server and returns it with its
port (tests ask for port 0). With `serving.tls` it listens with TLS (the
certificate is re-read when its files change); with `auth.enabled` every call
but health checks is authenticated and the registry's permissions apply; with
`serving.health_port` a second, plaintext port answers health checks only. `serve` runs one or more worker processes on one
port (SO_REUSEPORT lets the kernel spread connections across them) until
SIGTERM or SIGINT; each worker then reports NOT_SERVING on the health service
and drains in-flight calls for `serving.grace_seconds`.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import threading
from concurrent import futures
from types import FrameType, TracebackType

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from quiver.errors import InvalidArgumentError
from quiver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from quiver.serving.v1 import serving_service_pb2, serving_service_pb2_grpc
from quiver_server.auth.access import AccessControl
from quiver_server.auth.authenticator import build_authenticator
from quiver_server.auth.grpc_interceptor import AuthInterceptor
from quiver_server.auth.warnings import warn_if_open
from quiver_server.config import QuiverConfig
from quiver_server.governance.paths import GovernancePaths
from quiver_server.monitoring.sinks import ServerProfiles
from quiver_server.observability import configure_logging
from quiver_server.online.base import OnlineStore
from quiver_server.online.factory import open_online_store
from quiver_server.registry.provider import RegistryProvider
from quiver_server.registry.store import RegistryStore
from quiver_server.serving.decoding import RequestDecoding
from quiver_server.serving.feature_service import FeatureServingServicer
from quiver_server.serving.reflection import enable_reflection
from quiver_server.serving.registry_service import RegistryServicer
from quiver_server.telemetry import SupervisorMetrics, Telemetry, setup_telemetry
from quiver_server.transforms.engine import Transformations

log = structlog.get_logger(__name__)

SERVING_SERVICE = serving_service_pb2.DESCRIPTOR.services_by_name["FeatureServingService"].full_name
REGISTRY_SERVICE = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
HEALTH_CHECK_SECONDS = 2.0


class ServingServer:
    """A running gRPC server with its store, registry and health reporting."""

    def __init__(
        self,
        server: grpc.Server,
        store: OnlineStore,
        registry: RegistryProvider,
        health_servicer: health.HealthServicer,
        health_server: grpc.Server | None = None,
        profiles: ServerProfiles | None = None,
    ) -> None:
        self.server = server
        self.health_server = health_server
        self.profiles = profiles
        self.store = store
        self.registry = registry
        self.health = health_servicer
        self._stopped = threading.Event()
        self._ready = False
        self._monitor = threading.Thread(target=self._watch_store, name="store-health", daemon=True)

    def start(self) -> None:
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        self.registry.start()
        # The overall status ("") means "this process is alive" (liveness); the
        # per-service status means "ready to answer" (readiness): it needs a
        # registry and a reachable store, and flips with them.
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._ready = self._check_ready()
        self._set_health(serving=self._ready)
        self._monitor.start()

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, then drain in-flight calls for `grace` seconds."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        if self.profiles is not None:
            self.profiles.close()  # after the drain, so the last lookups are in
        self.registry.stop()
        self.store.close()

    def wait(self) -> None:
        self.server.wait_for_termination()

    def __enter__(self) -> ServingServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(0)

    def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in (SERVING_SERVICE, REGISTRY_SERVICE):
            self.health.set(service, status)

    def _check_ready(self) -> bool:
        if not self.registry.ready:
            return False
        try:
            return bool(self.store.healthy())
        except Exception:
            return False

    def _watch_store(self) -> None:
        while not self._stopped.wait(HEALTH_CHECK_SECONDS):
            ready = self._check_ready()
            if ready != self._ready and not self._stopped.is_set():
                log.warning(
                    "readiness changed", ready=ready, registry_version=self.registry.version
                )
                self._set_health(serving=ready)
                self._ready = ready


def create_server(
    config: QuiverConfig,
    host: str | None = None,
    port: int | None = None,
    store: OnlineStore | None = None,
    telemetry: Telemetry | None = None,
) -> tuple[ServingServer, int]:
    """Build and start a serving server; returns it and the port it bound."""
    registry = RegistryProvider(RegistryStore(config.registry_path))
    telemetry = telemetry or setup_telemetry(config, "serving")
    store = telemetry.instrument_store(store or open_online_store(config))
    authenticator = build_authenticator(config)
    interceptors = list(telemetry.server_interceptors())
    if authenticator is not None:
        interceptors.append(AuthInterceptor(authenticator))
    access = AccessControl(enabled=authenticator is not None)
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.serving.max_workers_threads, thread_name_prefix="rpc"
        ),
        # Telemetry outermost, so refused calls are traced and logged too; then
        # authentication, so nothing of an unauthenticated call is decoded; decoding
        # innermost, so telemetry logs its INVALID_ARGUMENT like any status.
        interceptors=[*interceptors, RequestDecoding()],
        options=[("grpc.so_reuseport", 1)],
    )
    profiles = ServerProfiles.from_config(config)
    serving_service_pb2_grpc.add_FeatureServingServiceServicer_to_server(
        FeatureServingServicer(
            registry, store, config.serving, config.offline_root,
            served=telemetry.lookup_observer(), profiles=profiles, access=access,
            transformations=Transformations(config.repo_path),
            governance=GovernancePaths.of(config),
        ),
        server,
    )
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(registry, access=access, governance=GovernancePaths.of(config)), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((SERVING_SERVICE, REGISTRY_SERVICE, health.SERVICE_NAME), server)
    host = host or config.serving.host
    address = f"{host}:{config.serving.port if port is None else port}"
    tls = config.serving.tls
    if tls.enabled:
        from quiver_server.auth.tls import ReloadingKeyPair, grpc_server_credentials, tls_paths

        pairs = ReloadingKeyPair(tls_paths(config, tls), tls.reload_check_seconds, "serving.tls")
        bound = server.add_secure_port(address, grpc_server_credentials(pairs))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise InvalidArgumentError.for_field("serving.port", f"cannot listen on {address}")
    health_server = None
    if config.serving.health_port is not None:
        health_server = _health_only_server(health_servicer, host, config.serving.health_port)
    app = ServingServer(server, store, registry, health_servicer, health_server=health_server,
                        profiles=profiles)
    app.start()
    return app, bound


def _health_only_server(
    health_servicer: health.HealthServicer, host: str, port: int
) -> grpc.Server:
    """A plaintext server answering grpc.health.v1 only, for probes."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="health"),
                         options=[("grpc.so_reuseport", 1)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise InvalidArgumentError.for_field("serving.health_port", f"cannot listen on {address}")
    return server


def _run_worker(
    config: QuiverConfig, host: str, port: int, worker: int, announce: bool = False,
    metrics_endpoint: bool = True,
) -> None:
    configure_logging(config.telemetry.logging)
    telemetry = setup_telemetry(config, "serving", install=True)
    metrics = config.telemetry.metrics
    if metrics_endpoint and telemetry.metrics is not None:
        telemetry.serve_metrics(metrics.port, metrics.host)
    app, bound = create_server(config, host, port, telemetry=telemetry)
    if announce:
        print(f"quiver: serving gRPC on {host}:{bound}", flush=True)
    warn_if_open(config, "serving", f"{host}:{bound}")
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("draining", worker=worker, signal=signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("serving", address=f"{host}:{bound}", worker=worker,
             registry_version=app.registry.version)
    done.wait()
    app.stop(config.serving.grace_seconds)
    telemetry.shutdown()
    log.info("stopped", worker=worker)


def serve(config: QuiverConfig, host: str | None = None, port: int | None = None,
          workers: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT with `workers` processes sharing one port."""
    host = host or config.serving.host
    port = config.serving.port if port is None else port
    workers = workers or config.serving.workers
    if workers == 1:
        _run_worker(config, host, port, 0, announce=True)
        return
    if port == 0:
        port = _reserve_port(host)
    print(f"quiver: serving gRPC on {host}:{port} with {workers} workers", flush=True)
    # Workers share the gRPC port, so this process serves their summed metrics.
    metrics_config = config.telemetry.metrics
    metrics = (SupervisorMetrics(metrics_config.port, metrics_config.host, config.registry_path,
                                 config.offline_root if config.monitoring.enabled else None)
               if metrics_config.enabled else None)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_run_worker, args=(config, host, port, i, False, False),
                        name=f"quiver-worker-{i}")
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
    if metrics is not None:
        metrics.close()


def _reserve_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host if host != "0.0.0.0" else "", 0))
        return int(sock.getsockname()[1])
