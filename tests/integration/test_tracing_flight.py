"""The Flight middleware, client and server, on a real Flight server.

The server here is a small stand-in using what the training server uses
(`flight_call` around each handler, `flight_call_counter` for streamed batches,
`Prefetch` for do_get, `traced` child spans), so the middleware is checked on its own: one trace per call across client and server,
child spans inside the handler and inside the streamed generator, row and byte
counts on spans and in metrics, and gRPC status codes from Quiver's
`google.rpc.Status` in `extra_info`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
import structlog
from google.rpc import status_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pyarrow import flight

from quiver._tracing import TracingClientMiddlewareFactory
from quiver.prefetch import Prefetch
from quiver_server.observability import add_trace_context
from quiver_server.telemetry import Metrics, Telemetry
from quiver_server.telemetry.flight_middleware import flight_call, flight_call_counter
from quiver_server.telemetry.spans import traced

SERVICE = "arrow.flight.protocol.FlightService"
SCHEMA = pa.schema([("x", pa.int64())])


@traced("quiver.flight.plan")
def plan(partitions: int) -> list[int]:
    return list(range(partitions))


@traced("quiver.flight.join")
def join(partition: int) -> pa.RecordBatch:
    return pa.record_batch([pa.array(range(partition * 10, partition * 10 + 10))], schema=SCHEMA)


class StandIn(flight.FlightServerBase):  # type: ignore[misc]
    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__("grpc://127.0.0.1:0", middleware=telemetry.flight_middleware())
        self.received = 0

    def get_flight_info(self, context: Any, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        with flight_call(context) as call:
            parts = plan(int(descriptor.command))
            endpoints = [flight.FlightEndpoint(str(p).encode(), []) for p in parts]
            info = flight.FlightInfo(SCHEMA, descriptor, endpoints, 10 * len(parts), -1)
            call.handled(info)
            return info

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.GeneratorStream:
        with flight_call(context):
            if ticket.ticket == b"missing":
                status = status_pb2.Status(code=5, message="spine 'missing' does not exist")
                raise flight.FlightServerError("spine 'missing' does not exist",
                                               extra_info=status.SerializeToString())
            partitions = int(ticket.ticket)
            batches = Prefetch((join(p) for p in range(partitions)), 2,
                               on_item=flight_call_counter(context))
            return flight.GeneratorStream(SCHEMA, batches)

    def do_put(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        with flight_call(context) as call:
            for chunk in reader:
                call.count(chunk.data)
                self.received += chunk.data.num_rows


class Tracing:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


@pytest.fixture
def setup() -> Iterator[tuple[flight.FlightClient, Tracing, Tracing, Telemetry, StandIn]]:
    server_tracing, client_tracing = Tracing(), Tracing()
    telemetry = Telemetry("flight", tracer_provider=server_tracing.provider,
                          metrics=Metrics.for_component("flight"), access_log=True)
    server = StandIn(telemetry)
    client = flight.FlightClient(
        f"grpc://127.0.0.1:{server.port}",
        middleware=[TracingClientMiddlewareFactory(f"127.0.0.1:{server.port}",
                                                   client_tracing.provider)],
    )
    yield client, server_tracing, client_tracing, telemetry, server
    client.close()
    server.shutdown()


def test_training_pull_is_one_trace_per_call(
    setup: tuple[flight.FlightClient, Tracing, Tracing, Telemetry, StandIn],
) -> None:
    client, server_tracing, client_tracing, telemetry, _ = setup
    info = client.get_flight_info(flight.FlightDescriptor.for_command(b"3"))
    assert len(info.endpoints) == 3
    table = client.do_get(flight.Ticket(b"3")).read_all()
    assert table.num_rows == 30

    for method in ("GetFlightInfo", "DoGet"):
        [client_span] = client_tracing.named(f"{SERVICE}/{method}")
        [server_span] = server_tracing.named(f"{SERVICE}/{method}")
        assert client_span.kind is SpanKind.CLIENT and server_span.kind is SpanKind.SERVER
        assert server_span.context.trace_id == client_span.context.trace_id
        assert server_span.parent is not None
        assert server_span.parent.span_id == client_span.context.span_id
        assert server_span.attributes["rpc.response.status_code"] == "OK"  # type: ignore[index]
        assert client_span.attributes["server.port"] > 0  # type: ignore[index]

    [info_span] = server_tracing.named(f"{SERVICE}/GetFlightInfo")
    [plan_span] = server_tracing.named("quiver.flight.plan")
    assert plan_span.parent is not None and plan_span.parent.span_id == info_span.context.span_id
    assert info_span.attributes is not None
    assert (info_span.attributes["quiver.partitions"], info_span.attributes["quiver.rows"]) == (3, 30)

    # Child spans opened while the stream is produced join the do_get span.
    [get_span] = server_tracing.named(f"{SERVICE}/DoGet")
    joins = server_tracing.named("quiver.flight.join")
    assert len(joins) == 3
    for span in joins:
        assert span.parent is not None and span.parent.span_id == get_span.context.span_id
    assert get_span.attributes is not None
    assert get_span.attributes["quiver.rows"] == 30
    assert get_span.attributes["quiver.batches"] == 3
    assert get_span.attributes["quiver.bytes"] == 3 * 80

    assert telemetry.metrics is not None
    registry = telemetry.metrics.registry
    assert registry.get_sample_value(
        "quiver_flight_rows_streamed_total", {"method": "DoGet"}) == 30
    assert registry.get_sample_value(
        "quiver_flight_bytes_streamed_total", {"method": "DoGet"}) == 240
    assert registry.get_sample_value("quiver_rpc_duration_seconds_count", {
        "service": SERVICE, "method": "DoGet", "status": "OK"}) == 1


def test_do_put_counts_received_rows(
    setup: tuple[flight.FlightClient, Tracing, Tracing, Telemetry, StandIn],
) -> None:
    client, server_tracing, client_tracing, telemetry, server = setup
    writer, _ = client.do_put(flight.FlightDescriptor.for_command(b"spine"), SCHEMA)
    for start in (0, 100):
        writer.write_batch(pa.record_batch([pa.array(range(start, start + 100))], schema=SCHEMA))
    writer.close()
    assert server.received == 200
    [put_span] = server_tracing.named(f"{SERVICE}/DoPut")
    [client_span] = client_tracing.named(f"{SERVICE}/DoPut")
    assert put_span.context.trace_id == client_span.context.trace_id
    assert put_span.attributes["quiver.rows"] == 200  # type: ignore[index]
    assert telemetry.metrics is not None
    assert telemetry.metrics.registry.get_sample_value(
        "quiver_flight_rows_streamed_total", {"method": "DoPut"}) == 200


def test_errors_take_their_code_from_the_status_in_extra_info(
    setup: tuple[flight.FlightClient, Tracing, Tracing, Telemetry, StandIn],
) -> None:
    client, server_tracing, client_tracing, telemetry, _ = setup
    with pytest.raises(flight.FlightServerError):
        client.do_get(flight.Ticket(b"missing")).read_all()
    [server_span] = server_tracing.named(f"{SERVICE}/DoGet")
    assert server_span.attributes["rpc.response.status_code"] == "NOT_FOUND"  # type: ignore[index]
    assert server_span.status.status_code is StatusCode.UNSET  # the caller's mistake
    [client_span] = client_tracing.named(f"{SERVICE}/DoGet")
    assert client_span.status.status_code is StatusCode.ERROR
    assert telemetry.metrics is not None
    assert telemetry.metrics.registry.get_sample_value("quiver_rpc_duration_seconds_count", {
        "service": SERVICE, "method": "DoGet", "status": "NOT_FOUND"}) == 1


def test_access_log_line_carries_the_trace(
    setup: tuple[flight.FlightClient, Tracing, Tracing, Telemetry, StandIn],
) -> None:
    client, server_tracing, _, _, _ = setup
    lines: list[dict[str, Any]] = []

    def keep(logger: Any, method: str, event: Any) -> Any:
        lines.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[add_trace_context, keep],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                        cache_logger_on_first_use=False)
    try:
        client.do_get(flight.Ticket(b"2")).read_all()
    finally:
        structlog.reset_defaults()
    [line] = [line for line in lines if line.get("event") == "rpc"]
    [span] = server_tracing.named(f"{SERVICE}/DoGet")
    assert line["method"] == "DoGet" and line["status"] == "OK" and line["rows"] == 20
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["span_id"] == format(span.context.span_id, "016x")


def test_telemetry_off_installs_no_middleware() -> None:
    assert Telemetry("flight", access_log=False).flight_middleware() == {}


# --- the real training-set server and TrainingClient ------------------------------------


@pytest.fixture
def training(applied_demo: Any) -> Iterator[tuple[str, Tracing, Tracing, Telemetry]]:
    from quiver_flight.server import create_flight_server

    server_tracing, client_tracing = Tracing(), Tracing()
    telemetry = Telemetry("flight", tracer_provider=server_tracing.provider,
                          metrics=Metrics.for_component("flight"))
    server, port = create_flight_server(applied_demo, telemetry=telemetry)
    yield f"grpc://127.0.0.1:{port}", server_tracing, client_tracing, telemetry
    server.shutdown()


def _spine(rows: int) -> pa.Table:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    return pa.table({
        "user_id": pa.array(range(1, rows + 1), pa.int64()),
        "merchant_id": pa.array([1 + i % 10 for i in range(rows)], pa.int64()),
        "event_timestamp": pa.array([now - timedelta(hours=i) for i in range(rows)],
                                    pa.timestamp("us", tz="UTC")),
    })


def _pull(location: str, client_tracing: Tracing) -> ReadableSpan:
    from quiver import TrainingClient

    tracer = client_tracing.provider.get_tracer("trainer")
    with TrainingClient(location, tracing=client_tracing.provider, max_workers=2) as client, \
            tracer.start_as_current_span("build training set"):
        table = client.get_training_set(_spine(40), feature_service="fraud_model_v1",
                                        partition_rows=20)
    assert table.num_rows == 40
    [root] = client_tracing.named("build training set")
    return root


def test_every_training_call_joins_client_and_server(
    training: tuple[str, Tracing, Tracing, Telemetry],
) -> None:
    location, server_tracing, client_tracing, telemetry = training
    root = _pull(location, client_tracing)
    for method, calls in (("DoPut", 1), ("GetFlightInfo", 1), ("DoGet", 2)):
        client_spans = client_tracing.named(f"{SERVICE}/{method}")
        server_spans = server_tracing.named(f"{SERVICE}/{method}")
        assert len(client_spans) == len(server_spans) == calls, method
        by_parent = {s.parent.span_id: s for s in server_spans if s.parent is not None}
        for client_span in client_spans:
            server_span = by_parent[client_span.context.span_id]
            assert server_span.context.trace_id == client_span.context.trace_id
            assert server_span.parent is not None and server_span.parent.is_remote
    # Calls made on the caller's thread belong to the caller's trace.
    for method in ("DoPut", "GetFlightInfo"):
        [span] = client_tracing.named(f"{SERVICE}/{method}")
        assert span.parent is not None and span.parent.span_id == root.context.span_id
    [put] = server_tracing.named(f"{SERVICE}/DoPut")
    assert put.attributes is not None and put.attributes["quiver.rows"] == 40
    gets = server_tracing.named(f"{SERVICE}/DoGet")
    assert sorted(s.attributes["quiver.rows"] for s in gets) == [20, 20]  # type: ignore[index]
    assert telemetry.metrics is not None
    assert telemetry.metrics.registry.get_sample_value(
        "quiver_flight_rows_streamed_total", {"method": "DoGet"}) == 40


def test_one_training_set_pull_is_one_trace(
    training: tuple[str, Tracing, Tracing, Telemetry],
) -> None:
    location, server_tracing, client_tracing, _ = training
    root = _pull(location, client_tracing)
    spans = client_tracing.spans() + server_tracing.spans()
    # The caller's span, then client and server spans of DoPut, GetFlightInfo and 2 x DoGet.
    assert len(spans) >= 1 + 2 * 4
    for span in spans:
        assert span.context.trace_id == root.context.trace_id, span.name
    for span in client_tracing.named(f"{SERVICE}/DoGet"):  # fetched on worker threads
        assert span.parent is not None and span.parent.span_id == root.context.span_id
    # Server-side work: planning under GetFlightInfo, ticket checks and the join under DoGet.
    [info] = server_tracing.named(f"{SERVICE}/GetFlightInfo")
    [plan] = server_tracing.named("quiver.flight.plan")
    assert plan.parent is not None and plan.parent.span_id == info.context.span_id
    assert info.attributes is not None and info.attributes["quiver.partitions"] >= 1
    do_gets = {s.context.span_id for s in server_tracing.named(f"{SERVICE}/DoGet")}
    joins = server_tracing.named("quiver.flight.point_in_time_join")
    assert len(joins) == len(do_gets) >= 1
    for span in joins + server_tracing.named("quiver.flight.ticket.open"):
        assert span.parent is not None and span.parent.span_id in do_gets, span.name
        assert span.context.trace_id == root.context.trace_id


def test_a_streamed_pull_stays_in_the_trace_it_was_started_in(
    training: tuple[str, Tracing, Tracing, Telemetry],
) -> None:
    """A reader made inside the caller's span but read after it (or on another thread, as
    pyarrow's writers do) still fetches its partitions in the caller's trace."""
    import threading

    from quiver import TrainingClient

    location, _, client_tracing, _ = training
    tracer = client_tracing.provider.get_tracer("trainer")
    with TrainingClient(location, tracing=client_tracing.provider, max_workers=2) as client:
        with tracer.start_as_current_span("build training set"):
            reader = client.get_training_set_reader(
                _spine(40), feature_service="fraud_model_v1", partition_rows=20
            )
        rows: list[int] = []
        consumer = threading.Thread(target=lambda: rows.append(reader.read_all().num_rows))
        consumer.start()
        consumer.join(60)
    assert rows == [40]
    [root] = client_tracing.named("build training set")
    gets = client_tracing.named(f"{SERVICE}/DoGet")
    assert len(gets) == 2
    for span in gets:
        assert span.context.trace_id == root.context.trace_id
        assert span.parent is not None and span.parent.span_id == root.context.span_id
