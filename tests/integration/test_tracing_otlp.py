"""Spans leave the server over the wire: real OTLP receivers (gRPC and HTTP) in-process.

The server's telemetry is built the production way, from quiver.yaml settings
(here as QUIVER_TELEMETRY__* overrides), with a real OTLP exporter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from quiver import OnlineClient
from quiver_server.config import QuiverConfig, load_config
from quiver_server.materialize import materialize_range
from quiver_server.serving.server import create_server
from quiver_server.telemetry import setup_telemetry

GET = "quiver.serving.v1.FeatureServingService/GetOnlineFeatures"


class Received:
    """Export requests an OTLP receiver got."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            self.requests.append(request)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) pairs."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.received.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", received
    server.stop(0)


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            paths.append(self.path)
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.add(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # A base URL, as in quiver.yaml and the Helm chart: /v1/traces is added.
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()
    assert set(paths) <= {"/v1/traces"}


def configured(repo: QuiverConfig, exporter: str, endpoint: str) -> QuiverConfig:
    return load_config(repo.repo_path, env={
        "QUIVER_TELEMETRY__TRACING__ENABLED": "true",
        "QUIVER_TELEMETRY__TRACING__EXPORTER": exporter,
        "QUIVER_TELEMETRY__TRACING__ENDPOINT": endpoint,
        "QUIVER_TELEMETRY__METRICS__ENABLED": "false",
    })


@pytest.fixture
def materialized(applied_demo: QuiverConfig) -> QuiverConfig:
    end = datetime.now(UTC) + timedelta(seconds=1)
    materialize_range(applied_demo, end - timedelta(days=30), end)
    return applied_demo


@pytest.mark.parametrize("exporter", ["otlp_grpc", "otlp_http"])
def test_spans_arrive_at_a_real_otlp_receiver(
    materialized: QuiverConfig, exporter: str, request: pytest.FixtureRequest
) -> None:
    endpoint, received = request.getfixturevalue(
        "grpc_receiver" if exporter == "otlp_grpc" else "http_receiver"
    )
    config = configured(materialized, exporter, endpoint)
    telemetry = setup_telemetry(config, "serving", env={})
    assert telemetry.tracer_provider is not None
    client_spans = InMemorySpanExporter()
    client_provider = TracerProvider()
    client_provider.add_span_processor(SimpleSpanProcessor(client_spans))

    app, port = create_server(config, "127.0.0.1", 0, telemetry=telemetry)
    with app, OnlineClient(f"127.0.0.1:{port}", tracing=client_provider) as client:
        client.get_online_features(feature_service="fraud_model_v1",
                                   entities={"user_id": [1, 2], "merchant_id": [1, 2]})
    telemetry.shutdown()  # flushes the batch processor

    [client_span] = client_spans.get_finished_spans()
    spans = received.spans()
    names = {span.name for _, span in spans}
    assert {GET, "quiver.registry.resolve", "online_store.read", "quiver.response.encode"} <= names
    trace_id = client_span.context.trace_id.to_bytes(16, "big")
    for resource, span in spans:
        assert span.trace_id == trace_id
        assert resource["service.name"] == "quiver-serving"
        assert resource["quiver.component"] == "serving"
    [server_span] = [span for _, span in spans if span.name == GET]
    assert server_span.parent_span_id == client_span.context.span_id.to_bytes(8, "big")
    store_read = next(span for _, span in spans if span.name == "online_store.read")
    assert store_read.parent_span_id == server_span.span_id
    attributes = {a.key: a.value for a in store_read.attributes}
    assert attributes["db.system"].string_value == "sqlite"
    assert attributes["quiver.entities"].int_value == 2


@pytest.mark.slow
def test_materialize_job_exports_spans_and_pushes_metrics(
    applied_demo: QuiverConfig, grpc_receiver: tuple[str, Received]
) -> None:
    """`quiver materialize` as a CronJob runs it: spans over OTLP, rows to a Pushgateway."""
    endpoint, received = grpc_receiver
    pushed: list[tuple[str, str, bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            pushed.append(("PUT", self.path, self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    gateway = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "QUIVER_TELEMETRY__TRACING__ENABLED": "true",
        "QUIVER_TELEMETRY__TRACING__ENDPOINT": endpoint,
        "QUIVER_TELEMETRY__METRICS__PUSHGATEWAY": f"127.0.0.1:{gateway.server_port}",
    }
    try:
        job = subprocess.run(
            [sys.executable, "-m", "quiver_server.cli", "--repo", str(applied_demo.repo_path),
             "materialize", (datetime.now(UTC) - timedelta(days=30)).isoformat(), "now"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert job.returncode == 0, job.stdout + job.stderr
    finally:
        gateway.shutdown()
        gateway.server_close()

    spans = received.spans()
    names = [span.name for _, span in spans]
    assert names.count("quiver.materialize") == 1
    assert names.count("quiver.materialize.view") == 3
    assert {resource["service.name"] for resource, _ in spans} == {"quiver-materialize"}
    [(method, path, body)] = pushed
    assert path == f"/metrics/job/quiver-materialize/project/{applied_demo.project}"
    # Last-run gauges: what one push says stays true however many pushes came before.
    assert b"# TYPE quiver_materialize_last_run_rows gauge" in body
    assert b'quiver_materialize_last_run_rows{feature_view="user_profile",result="written"}' in body
    assert b"# TYPE quiver_materialize_last_run_finished_timestamp_seconds gauge" in body
