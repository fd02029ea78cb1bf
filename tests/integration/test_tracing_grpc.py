"""One online lookup from the Python client is one trace: client, server and store spans.

The client and the server each get their own TracerProvider with an in-memory
exporter, as two processes would; only the `traceparent` metadata joins them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from quiver import OnlineClient
from quiver.errors import NotFoundError, UnavailableError
from quiver_server.config import QuiverConfig
from quiver_server.materialize import materialize_range
from quiver_server.observability import add_trace_context
from quiver_server.online.base import ViewReadResult
from quiver_server.online.sqlite import SqliteOnlineStore
from quiver_server.serving.server import ServingServer, create_server
from quiver_server.telemetry import Metrics, Telemetry

GET = "quiver.serving.v1.FeatureServingService/GetOnlineFeatures"
PUSH = "quiver.serving.v1.FeatureServingService/PushFeatures"


class Tracing:
    """A TracerProvider that keeps its finished spans in memory."""

    def __init__(self, sampler: Any = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]


class SwitchableStore(SqliteOnlineStore):
    failing = False

    def read(self, reads: Any) -> list[ViewReadResult]:
        if self.failing:
            raise UnavailableError("online store sqlite unavailable: disk I/O error")
        return super().read(reads)


@pytest.fixture
def materialized(applied_demo: QuiverConfig) -> QuiverConfig:
    end = datetime.now(UTC) + timedelta(seconds=1)
    materialize_range(applied_demo, end - timedelta(days=30), end)
    return applied_demo


def start(config: QuiverConfig, tracing: Tracing, store: SqliteOnlineStore | None = None
          ) -> tuple[ServingServer, str]:
    telemetry = Telemetry(
        "serving", tracer_provider=tracing.provider,
        metrics=Metrics.for_component("serving"), access_log=True,
    )
    app, port = create_server(config, "127.0.0.1", 0, store=store, telemetry=telemetry)
    return app, f"127.0.0.1:{port}"


@pytest.fixture
def store(materialized: QuiverConfig) -> SwitchableStore:
    return SwitchableStore(materialized.resolve(materialized.online_store.path))  # type: ignore[union-attr]


@pytest.fixture
def server_tracing() -> Tracing:
    return Tracing()


@pytest.fixture
def target(materialized: QuiverConfig, server_tracing: Tracing, store: SwitchableStore
           ) -> Iterator[str]:
    app, address = start(materialized, server_tracing, store)
    with app:
        yield address


@pytest.fixture
def access_lines() -> Iterator[list[dict[str, Any]]]:
    """Log events as the server's processors see them (trace ids added)."""
    lines: list[dict[str, Any]] = []

    def keep(logger: Any, method: str, event: Any) -> Any:
        lines.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(
        processors=[add_trace_context, keep],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=False,
    )
    yield lines
    structlog.reset_defaults()


def test_one_lookup_is_one_trace_across_client_server_and_store(
    target: str, server_tracing: Tracing
) -> None:
    client_tracing = Tracing()
    with OnlineClient(target, tracing=client_tracing.provider) as client:
        client.get_online_features(
            feature_service="fraud_model_v1", entities={"user_id": [1, 2], "merchant_id": [3, 4]}
        )

    client_span = client_tracing.named(GET)
    server_span = server_tracing.named(GET)
    resolve = server_tracing.named("quiver.registry.resolve")
    store_read = server_tracing.named("online_store.read")
    encode = server_tracing.named("quiver.response.encode")

    trace_id = client_span.context.trace_id
    for span in (server_span, resolve, store_read, encode):
        assert span.context.trace_id == trace_id, span.name
    assert client_span.kind is SpanKind.CLIENT and client_span.parent is None
    assert server_span.kind is SpanKind.SERVER
    assert server_span.parent is not None and server_span.parent.is_remote
    assert server_span.parent.span_id == client_span.context.span_id
    for child in (resolve, store_read, encode):
        assert child.parent is not None and child.parent.span_id == server_span.context.span_id

    # OpenTelemetry RPC semantic conventions, both sides.
    for span in (client_span, server_span):
        attrs = span.attributes or {}
        assert attrs["rpc.system.name"] == "grpc" and attrs["rpc.system"] == "grpc"
        assert attrs["rpc.method"] == GET
        assert attrs["rpc.service"] == "quiver.serving.v1.FeatureServingService"
        assert attrs["rpc.grpc.status_code"] == 0 and attrs["rpc.response.status_code"] == "OK"
    assert client_span.attributes["server.address"] == "127.0.0.1"  # type: ignore[index]
    assert server_span.attributes["quiver.entities"] == 2  # type: ignore[index]
    assert server_span.attributes["network.peer.address"] == "127.0.0.1"  # type: ignore[index]

    # The store span says what was read, never which keys or values.
    attrs = dict(store_read.attributes or {})
    assert store_read.kind is SpanKind.CLIENT
    assert attrs == {
        "db.system": "sqlite", "db.system.name": "sqlite", "db.operation.name": "read",
        "quiver.views": 3, "quiver.entities": 2, "quiver.features": 20,
    }
    assert server_span.attributes["quiver.features"] == 20  # type: ignore[index]
    # Spans nest in time as they do in the call.
    assert client_span.start_time <= server_span.start_time  # type: ignore[operator]
    assert server_span.end_time <= client_span.end_time  # type: ignore[operator]
    assert server_span.start_time <= store_read.start_time  # type: ignore[operator]
    assert store_read.end_time <= server_span.end_time  # type: ignore[operator]


def test_store_failure_marks_server_and_store_spans(
    target: str, server_tracing: Tracing, store: SwitchableStore
) -> None:
    store.failing = True
    client_tracing = Tracing()
    with OnlineClient(target, tracing=client_tracing.provider) as client, \
            pytest.raises(UnavailableError):
        client.get_online_features(feature_service="fraud_model_v1",
                                   entities={"user_id": [1], "merchant_id": [1]})
    server_span = server_tracing.named(GET)
    store_read = server_tracing.named("online_store.read")
    client_span = client_tracing.named(GET)
    assert server_span.status.status_code is StatusCode.ERROR
    assert "disk I/O error" in (server_span.status.description or "")
    assert server_span.attributes["rpc.response.status_code"] == "UNAVAILABLE"  # type: ignore[index]
    assert server_span.attributes["error.type"] == "UNAVAILABLE"  # type: ignore[index]
    assert store_read.status.status_code is StatusCode.ERROR
    assert [e.name for e in store_read.events] == ["exception"]
    assert client_span.status.status_code is StatusCode.ERROR
    assert client_span.attributes["rpc.grpc.status_code"] == 14  # type: ignore[index]


def test_a_bad_request_is_not_a_server_error(target: str, server_tracing: Tracing) -> None:
    with OnlineClient(target, tracing=Tracing().provider) as client, \
            pytest.raises(NotFoundError):
        client.get_online_features(features=["user_transaction_stats:nope"],
                                   entities={"user_id": [1]})
    server_span = server_tracing.named(GET)
    assert server_span.attributes["rpc.response.status_code"] == "NOT_FOUND"  # type: ignore[index]
    assert server_span.status.status_code is StatusCode.UNSET
    resolve = server_tracing.named("quiver.registry.resolve")
    assert resolve.status.status_code is StatusCode.ERROR  # where it failed
    assert not [s for s in server_tracing.spans() if s.name == "online_store.read"]


def test_push_has_its_own_span_under_the_server_span(
    target: str, server_tracing: Tracing
) -> None:
    now = datetime.now(UTC)
    with OnlineClient(target, tracing=Tracing().provider) as client:
        client.push("merchant_stats", {
            "merchant_id": [501], "event_timestamp": [now], "merchant_category": ["travel"],
            "chargeback_rate_30d": [0.01], "merchant_txn_count_24h": [5],
            "avg_ticket_30d": [12.5], "is_high_risk": [False],
        })
    server_span = server_tracing.named(PUSH)
    push = server_tracing.named("quiver.push")
    write = server_tracing.named("online_store.write")
    assert push.parent is not None and push.parent.span_id == server_span.context.span_id
    assert write.parent is not None and write.parent.span_id == push.context.span_id
    attributes = dict(server_span.attributes or {})
    assert {k: attributes[k] for k in (
        "quiver.feature_view", "quiver.rows", "quiver.push_target", "quiver.rows_superseded",
    )} == {
        "quiver.feature_view": "merchant_stats", "quiver.rows": 1, "quiver.push_target": "online",
        "quiver.rows_superseded": 0,
    }


def test_parent_based_sampling_follows_the_caller(materialized: QuiverConfig) -> None:
    # The server samples no new traces, but continues a caller's sampled trace.
    server_tracing = Tracing(sampler=ParentBased(TraceIdRatioBased(0.0)))
    app, address = start(materialized, server_tracing)
    entities = {"user_id": [1], "merchant_id": [1]}
    with app:
        with OnlineClient(address, tracing=Tracing().provider) as client:
            client.get_online_features(feature_service="fraud_model_v1", entities=entities)
        assert {s.name for s in server_tracing.spans()} == {
            GET, "quiver.registry.resolve", "online_store.read", "quiver.response.encode",
        }
        server_tracing.exporter.clear()
        # A caller that decided not to sample is not sampled here either.
        with OnlineClient(address, tracing=Tracing(sampler=ALWAYS_OFF).provider) as client:
            client.get_online_features(feature_service="fraud_model_v1", entities=entities)
        with OnlineClient(address) as client:  # no trace context at all
            client.get_online_features(feature_service="fraud_model_v1", entities=entities)
    assert server_tracing.spans() == []


def test_every_log_line_of_a_request_carries_its_trace(
    target: str, server_tracing: Tracing, access_lines: list[dict[str, Any]]
) -> None:
    with OnlineClient(target, tracing=Tracing().provider) as client:
        client.get_online_features(feature_service="fraud_model_v1",
                                   entities={"user_id": [1, 2, 3], "merchant_id": [1, 2, 3]})
    server_span = server_tracing.named(GET)
    [line] = [line for line in access_lines if line.get("event") == "rpc"]
    assert line["method"] == "GetOnlineFeatures" and line["status"] == "OK"
    assert line["entities"] == 3 and line["duration_ms"] > 0
    assert line["trace_id"] == format(server_span.context.trace_id, "032x")
    assert line["span_id"] == format(server_span.context.span_id, "016x")


def test_untraced_server_still_logs_the_callers_trace_id(
    materialized: QuiverConfig, access_lines: list[dict[str, Any]]
) -> None:
    telemetry = Telemetry("serving", access_log=True)  # no tracing, no metrics
    app, port = create_server(materialized, "127.0.0.1", 0, telemetry=telemetry)
    client_tracing = Tracing()
    with app, OnlineClient(f"127.0.0.1:{port}", tracing=client_tracing.provider) as client:
        client.get_online_features(feature_service="fraud_model_v1",
                                   entities={"user_id": [1], "merchant_id": [1]})
    [line] = [line for line in access_lines if line.get("event") == "rpc"]
    assert line["trace_id"] == format(client_tracing.named(GET).context.trace_id, "032x")
    assert "span_id" not in line
