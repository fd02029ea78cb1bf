"""`Telemetry`: what one process traces and measures, built once from `telemetry` in quiver.yaml."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from quiver_server.config import QuiverConfig
from quiver_server.online.base import OnlineStore
from quiver_server.telemetry.metrics import Graded, Metrics, MetricsEndpoint
from quiver_server.telemetry.tracing import build_tracer_provider, tracing_enabled

if TYPE_CHECKING:
    from pyarrow import flight

INSTRUMENTATION_SCOPE = "quiver_server"


class Telemetry:
    """Tracing, metrics and access logging of one component (serving, flight, materialize).

    Everything is optional: with tracing off there is no tracer, with metrics off
    no metrics, and with all of it off `server_interceptors()` is empty, so no
    telemetry code runs on a call at all.

    Args:
        component: serving, flight or materialize.
        tracer_provider: Where spans go; None disables tracing.
        metrics: The Prometheus families; None disables metrics.
        access_log: One log line per RPC.
        store_system: db.system of the online store (sqlite, aerospike).
        pushgateway: ``host:port`` of the Pushgateway a batch job pushes its metrics to.
    """

    def __init__(
        self,
        component: str,
        *,
        tracer_provider: TracerProvider | None = None,
        metrics: Metrics | None = None,
        access_log: bool = True,
        store_system: str = "sqlite",
        pushgateway: str | None = None,
    ) -> None:
        self.component = component
        self.tracer_provider = tracer_provider
        self.tracer: Tracer | None = None
        if tracer_provider is not None:
            from quiver import __version__

            self.tracer = tracer_provider.get_tracer(INSTRUMENTATION_SCOPE, __version__)
        self.metrics = metrics
        self.access_log = access_log
        self.store_system = store_system
        self.pushgateway = pushgateway
        self.endpoint: MetricsEndpoint | None = None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None or self.metrics is not None or self.access_log

    def server_interceptors(self) -> list[grpc.ServerInterceptor]:
        """The gRPC server interceptors: none at all when everything is off."""
        if not self.enabled:
            return []
        from quiver_server.telemetry.grpc_server import TelemetryInterceptor

        metrics = self.metrics
        return [TelemetryInterceptor(
            tracer=self.tracer,
            rpc=metrics.rpc if metrics else None,
            online=metrics.online if metrics else None,
            access_log=self.access_log,
        )]

    def lookup_observer(self) -> Callable[[Sequence[Graded]], None] | None:
        """What counts each lookup's feature values by status; None with metrics off."""
        online = self.metrics.online if self.metrics else None
        return online.count_statuses if online is not None else None

    def instrument_store(self, store: OnlineStore) -> OnlineStore:
        """`store` with spans and latency metrics, or `store` itself when both are off."""
        online = self.metrics.online if self.metrics else None
        if self.tracer is None and online is None:
            return store
        from quiver_server.telemetry.store import InstrumentedOnlineStore

        return InstrumentedOnlineStore(store, self.store_system, online)

    def flight_middleware(self) -> dict[str, flight.ServerMiddlewareFactory]:
        """Middleware for `pyarrow.flight.FlightServerBase(middleware=...)`; {} when all is off."""
        if not self.enabled:
            return {}
        from quiver_server.telemetry.flight_middleware import (
            MIDDLEWARE_KEY,
            TelemetryServerMiddlewareFactory,
        )

        metrics = self.metrics
        return {MIDDLEWARE_KEY: TelemetryServerMiddlewareFactory(
            tracer=self.tracer,
            rpc=metrics.rpc if metrics else None,
            flight=metrics.flight if metrics else None,
            access_log=self.access_log,
        )}

    def serve_metrics(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the /metrics endpoint (port 0 picks one); returns the port."""
        if self.metrics is None:
            raise RuntimeError("metrics are disabled (telemetry.metrics.enabled: false)")
        if self.endpoint is None:
            self.endpoint = MetricsEndpoint(self.metrics.exposition_registry(), port, host)
        return self.endpoint.port

    def push_metrics(self, job: str, grouping: Mapping[str, str] | None = None) -> None:
        """Push this process's metrics to the configured Pushgateway (batch jobs)."""
        if self.metrics is None or not self.pushgateway:
            return
        from prometheus_client import push_to_gateway

        push_to_gateway(self.pushgateway, job=job, registry=self.metrics.registry,
                        grouping_key=dict(grouping or {}))

    def force_flush(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()

    def shutdown(self) -> None:
        """Flush and stop exporting; stop the metrics endpoint."""
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


def setup_telemetry(
    config: QuiverConfig,
    component: str,
    *,
    install: bool = False,
    env: Mapping[str, str] | None = None,
) -> Telemetry:
    """Telemetry for `component` as `config.telemetry` and the OTEL_* variables say.

    Args:
        config: The repo's configuration.
        component: serving, flight or materialize.
        install: Make its tracer provider the global OpenTelemetry one, so
            libraries' own instrumentation joins the same traces. Process entry
            points (the servers, the materialize job) do this; tests and
            embedders leave it off.
        env: Environment for OTEL_* settings; default os.environ.
    """
    telemetry_config = config.telemetry
    environ = os.environ if env is None else env
    provider = None
    if tracing_enabled(telemetry_config.tracing, environ):
        provider = build_tracer_provider(telemetry_config.tracing, component, environ)
    metrics = None
    if telemetry_config.metrics.enabled:
        metrics = Metrics.for_component(
            component, config.registry_path,
            config.offline_root if config.monitoring.enabled else None,
        )
    telemetry = Telemetry(
        component,
        tracer_provider=provider,
        metrics=metrics,
        access_log=telemetry_config.logging.access_log and component != "materialize",
        store_system=config.online_store.type,
        pushgateway=telemetry_config.metrics.pushgateway,
    )
    if install and provider is not None:
        _set_global_provider(provider)
    return telemetry


def _set_global_provider(provider: Any) -> None:
    # The OpenTelemetry global can be set once per process; a second server in the
    # same process keeps its own provider for its own spans.
    current = trace.get_tracer_provider()
    if isinstance(current, trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
