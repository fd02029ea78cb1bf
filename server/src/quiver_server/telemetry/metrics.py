"""Prometheus metrics of the serving, Flight and materialization processes.

Every family lives in a `CollectorRegistry` owned by one `Telemetry`, so several
servers in one process (tests) never collide. Names follow Prometheus
conventions: a `quiver_` prefix, base units (seconds, bytes), `_total` on counters.

Several worker processes (`quiver serve --workers N`) share one gRPC port, so
they cannot each own the metrics port too. They run in prometheus_client's
multiprocess mode instead: each worker writes its values to memory-mapped files
under PROMETHEUS_MULTIPROC_DIR and the supervising process serves the sum on the
one metrics port (`SupervisorMetrics`). One scrape target per pod, whatever N is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import Counter as CounterOf
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quiver.registry.v1 import registry_pb2
from quiver.serving.v1 import serving_service_pb2 as serving_pb
from quiver_server.registry.store import RegistryStore

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# From 100 us (a cached 1-entity lookup) to 5 min (a large Flight partition).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)
STORE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
ENTITY_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


@dataclass(frozen=True)
class Family:
    """One metric family as Quiver declares it; `exported_metrics` reads these."""

    kind: type[Counter] | type[Gauge] | type[Histogram]
    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def make(self, registry: CollectorRegistry) -> Any:
        if self.kind is Histogram:
            return Histogram(self.name, self.documentation, self.labels, buckets=self.buckets,
                             registry=registry)
        if self.kind is Gauge:
            return Gauge(self.name, self.documentation, self.labels, registry=registry)
        return Counter(self.name, self.documentation, self.labels, registry=registry)


RPC_DURATION = Family(
    Histogram, "quiver_rpc_duration_seconds",
    "Server-side duration of RPCs, by service, method and gRPC status code.",
    ("service", "method", "status"), LATENCY_BUCKETS,
)
ONLINE_ENTITIES = Family(
    Histogram, "quiver_online_entities_per_request",
    "Entities asked for per GetOnlineFeatures call.", (), ENTITY_BUCKETS,
)
FEATURE_STATUS = Family(
    Counter, "quiver_feature_status",
    "Feature values served, by status (PRESENT, NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE).",
    ("status",),
)
STORE_DURATION = Family(
    Histogram, "quiver_online_store_duration_seconds",
    "Duration of online store calls, by store and operation.", ("store", "operation"),
    STORE_BUCKETS,
)
STORE_ERRORS = Family(
    Counter, "quiver_online_store_errors",
    "Failed online store calls, by store, operation and error class.",
    ("store", "operation", "error"),
)
FLIGHT_ROWS = Family(
    Counter, "quiver_flight_rows_streamed",
    "Rows sent (do_get) or received (do_put) as Arrow record batches.", ("method",),
)
FLIGHT_BYTES = Family(
    Counter, "quiver_flight_bytes_streamed",
    "Arrow buffer bytes of the record batches sent (do_get) or received (do_put).", ("method",),
)
FLIGHT_BATCHES = Family(
    Counter, "quiver_flight_batches_streamed",
    "Record batches sent (do_get) or received (do_put).", ("method",),
)
# Gauges, not counters: a batch job's counters restart at zero every run, and the
# Pushgateway keeps only the last push, so only "the last run's" values mean anything.
MATERIALIZE_ROWS = Family(
    Gauge, "quiver_materialize_last_run_rows",
    "Rows the last materialization of the view offered the online store, by result "
    "(written, or superseded by a newer stored row).", ("feature_view", "result"),
)
MATERIALIZE_DURATION = Family(
    Gauge, "quiver_materialize_last_run_duration_seconds",
    "Wall time of the last materialization of the view.", ("feature_view",),
)
MATERIALIZE_FINISHED = Family(
    Gauge, "quiver_materialize_last_run_finished_timestamp_seconds",
    "When the last materialization of the view finished, in seconds since the epoch.",
    ("feature_view",),
)
FAMILIES = (
    RPC_DURATION, ONLINE_ENTITIES, FEATURE_STATUS, STORE_DURATION, STORE_ERRORS,
    FLIGHT_ROWS, FLIGHT_BYTES, FLIGHT_BATCHES, MATERIALIZE_ROWS, MATERIALIZE_DURATION,
    MATERIALIZE_FINISHED,
)
PRESENT: int = serving_pb.FEATURE_STATUS_PRESENT
_STATUS_NAMES = {
    int(value): name.removeprefix("FEATURE_STATUS_")
    for name, value in serving_pb.FeatureStatus.items()
}


class Graded(Protocol):
    """A graded output column (`quiver_server.serving.online_read.OutputColumn`)."""

    @property
    def statuses(self) -> list[int]: ...


class RpcMetrics:
    """Per-call latency of every gRPC and Flight method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = RPC_DURATION.make(registry)


class OnlineMetrics:
    """The online read path: request sizes, feature statuses and the store."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.entities = ONLINE_ENTITIES.make(registry)
        self.feature_status = FEATURE_STATUS.make(registry)
        self.store_duration = STORE_DURATION.make(registry)
        self.store_errors = STORE_ERRORS.make(registry)
        self._status_children: dict[int, Any] = {}

    def count_statuses(self, columns: Sequence[Graded]) -> None:
        """Add the values of a lookup's graded columns to `quiver_feature_status_total`.

        Counted from the columns' status lists before they are encoded: reading
        them back from the protobuf response costs several times more.
        """
        present = 0
        others: CounterOf[int] = CounterOf()
        for column in columns:
            statuses = column.statuses
            found = statuses.count(PRESENT)
            present += found
            if found != len(statuses):
                others.update(statuses)
        others.pop(PRESENT, None)
        if present:
            self.status_child(PRESENT).inc(present)
        for status, n in others.items():
            self.status_child(status).inc(n)

    def status_child(self, status: int) -> Any:
        """The `quiver_feature_status_total` series of one status number (cached)."""
        child = self._status_children.get(status)
        if child is None:
            child = self._status_children[status] = self.feature_status.labels(
                _STATUS_NAMES.get(status, str(status))
            )
        return child


class FlightMetrics:
    """Arrow data moved by the Flight server."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = FLIGHT_ROWS.make(registry)
        self.bytes = FLIGHT_BYTES.make(registry)
        self.batches = FLIGHT_BATCHES.make(registry)


class MaterializeMetrics:
    """The last materialization run of each view, as gauges.

    A materialization job is a short batch process: it pushes its metrics to a
    Pushgateway when it ends, and the gateway keeps only the latest push. Every
    run's counters would start from zero again, so `rate()` over them reads
    resets and one-sample series (and a histogram's quantile is NaN). Gauges of
    the last run mean the same whichever push Prometheus scraped: query them
    as they are (`time() - ..._finished_timestamp_seconds` is the age of the
    last run).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = MATERIALIZE_ROWS.make(registry)
        self.duration = MATERIALIZE_DURATION.make(registry)
        self.finished = MATERIALIZE_FINISHED.make(registry)

    def record(self, view: str, written: int, superseded: int, seconds: float) -> None:
        """Set the gauges of one view's run, just finished."""
        self.rows.labels(view, "written").set(written)
        self.rows.labels(view, "superseded").set(superseded)
        self.duration.labels(view).set(seconds)
        self.finished.labels(view).set_to_current_time()


class MaterializationLagCollector(Collector):
    """`quiver_materialization_lag_seconds`: now minus each online view's watermark.

    The watermark is the end of the newest materialized window (stored in the
    registry by `quiver materialize`), so this is how far the online store may
    be behind the offline history. Read from the registry directory at scrape
    time, which works whichever process or CronJob materialized.
    """

    def __init__(self, registry_path: str | Path) -> None:
        self._store = RegistryStore(registry_path)
        self._lock = threading.Lock()
        self._version = -1
        self._watermarks: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "quiver_materialization_lag_seconds",
            "Seconds between now and the end of the newest materialized window, per online view.",
            labels=["feature_view"],
        )
        now = time.time()
        for view, watermark in sorted(self._current().items()):
            family.add_metric([view], max(0.0, now - watermark))
        yield family

    def describe(self) -> Iterable[Metric]:
        return []

    def _current(self) -> dict[str, float]:
        try:
            version = self._store.latest_good_version()
            with self._lock:
                if version != self._version:
                    proto = self._store.read(version) if version else registry_pb2.Registry()
                    self._watermarks = _watermarks(proto)
                    self._version = version
                return self._watermarks
        except Exception:
            return {}  # a scrape never fails because the registry is mid-write


def _watermarks(proto: registry_pb2.Registry) -> dict[str, float]:
    online = {view.name for view in proto.feature_views if view.online}
    found: dict[str, float] = {}
    for name, meta in proto.view_meta.items():
        if name in online and meta.materialization.HasField("watermark"):
            found[name] = meta.materialization.watermark.ToNanoseconds() / 1e9
    return found


@dataclass
class Metrics:
    """The families one process exports, in their own registry."""

    registry: CollectorRegistry
    rpc: RpcMetrics | None = None
    online: OnlineMetrics | None = None
    flight: FlightMetrics | None = None
    materialize: MaterializeMetrics | None = None
    extra: list[Collector] = field(default_factory=list)

    @classmethod
    def for_component(
        cls, component: str, registry_path: str | Path | None = None,
        offline_root: str | None = None,
    ) -> Metrics:
        """serving: RPC, online, lag and monitoring; flight: RPC and Flight; materialize: its rows."""
        registry = CollectorRegistry(auto_describe=True)
        metrics = cls(registry)
        if component in ("serving", "flight"):
            metrics.rpc = RpcMetrics(registry)
        if component == "serving":
            metrics.online = OnlineMetrics(registry)
            if registry_path is not None:
                metrics.extra.append(MaterializationLagCollector(registry_path))
            if offline_root is not None:
                metrics.extra.append(_monitoring_collector(offline_root))
        if component == "flight":
            metrics.flight = FlightMetrics(registry)
        if component == "materialize":
            metrics.materialize = MaterializeMetrics(registry)
        return metrics

    def exposition_registry(self) -> CollectorRegistry:
        """What the endpoint serves: this process's families, or every worker's."""
        if multiprocess_mode():
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        else:
            merged = self.registry
            ProcessCollector(registry=merged)
        for collector in self.extra:
            merged.register(collector)
        return merged


class MetricsEndpoint:
    """A running `/metrics` HTTP endpoint (prometheus_client's WSGI server)."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            # The socket's own error names no address; two servers of one repo on one
            # machine (serve and serve-flight) default to the same metrics port.
            raise OSError(
                exc.errno,
                f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); set "
                f"telemetry.metrics.port (QUIVER_TELEMETRY__METRICS__PORT) to a free port",
            ) from exc
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SupervisorMetrics:
    """The metrics endpoint of a process that supervises `--workers N` servers.

    Call before starting the workers: it points PROMETHEUS_MULTIPROC_DIR at an
    empty directory (a temporary one unless the variable is already set, e.g.
    to an emptyDir volume), which the spawned workers inherit.
    """

    def __init__(
        self, port: int, host: str, registry_path: str | Path | None,
        offline_root: str | None = None,
    ) -> None:
        given = os.environ.get(MULTIPROC_ENV)
        self._owned = None if given else tempfile.mkdtemp(prefix="quiver-metrics-")
        self.directory = Path(given or self._owned or "")
        self.directory.mkdir(parents=True, exist_ok=True)
        # Values left by an earlier run would be added to this run's.
        for stale in self.directory.glob("*.db"):
            stale.unlink()
        os.environ[MULTIPROC_ENV] = str(self.directory)
        metrics = Metrics(CollectorRegistry())
        if registry_path is not None:
            metrics.extra.append(MaterializationLagCollector(registry_path))
        if offline_root is not None:
            metrics.extra.append(_monitoring_collector(offline_root))
        self.endpoint = MetricsEndpoint(metrics.exposition_registry(), port, host)
        self.port = self.endpoint.port

    def close(self) -> None:
        self.endpoint.close()
        if self._owned:
            shutil.rmtree(self._owned, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)


def _monitoring_collector(offline_root: str) -> Collector:
    from quiver_server.monitoring.metrics import MonitoringCollector

    return MonitoringCollector(offline_root)


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name the Quiver servers can export, with its label names.

    Names are as Prometheus stores them: counters as `<name>_total`, histograms
    as `<name>_bucket` (with `le`), `_sum` and `_count`. The dashboards test
    checks every panel query against this.
    """
    from quiver_server.monitoring.metrics import MONITORING_SERIES

    found: dict[str, frozenset[str]] = {
        "quiver_materialization_lag_seconds": frozenset({"feature_view"}),
        **MONITORING_SERIES,
    }
    for family in FAMILIES:
        labels = frozenset(family.labels)
        if family.kind is Gauge:
            found[family.name] = labels
        elif family.kind is Counter:
            found[f"{family.name}_total"] = labels
        else:
            found[f"{family.name}_bucket"] = labels | {"le"}
            found[f"{family.name}_sum"] = labels
            found[f"{family.name}_count"] = labels
    return found
