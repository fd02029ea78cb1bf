"""Quiver's direct OTLP encoder produces exactly what the SDK's encoder produces."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from quiver_server.telemetry.otlp import Encoder
from quiver_server.telemetry.recorder import SpanRecorder


def spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    serving = TracerProvider(resource=Resource.create({"service.name": "quiver-serving",
                                                       "quiver.component": "serving"}))
    flight = TracerProvider(resource=Resource.create({"service.name": "quiver-flight"}))
    for provider in (serving, flight):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                         trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "x1")]))
    tracer = serving.get_tracer("quiver_server", "0.1.0")
    with tracer.start_as_current_span(
        "quiver.serving.v1.FeatureServingService/GetOnlineFeatures",
        context=set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.SERVER,
        attributes={"rpc.system.name": "grpc", "rpc.grpc.status_code": 14, "big": 2**40,
                    "negative": -3, "ratio": 0.25, "ok": True, "no": False,
                    "names": ["a", "b"], "numbers": [1, 2], "empty": ""},
        links=[Link(SpanContext(remote.trace_id, 0x1234, is_remote=True), {"why": "batch"})],
    ) as server:
        server.add_event("retry", {"attempt": 2})
        with tracer.start_as_current_span("online_store.read", kind=SpanKind.CLIENT) as store:
            store.set_status(Status(StatusCode.ERROR, "disk I/O error"))
            store.record_exception(OSError("disk I/O error"))
        server.set_status(Status(StatusCode.OK))
    other = serving.get_tracer("other")
    with other.start_as_current_span("plain"):
        pass
    with flight.get_tracer("quiver_server").start_as_current_span(
        "arrow.flight.protocol.FlightService/DoGet", kind=SpanKind.SERVER
    ):
        pass
    # Spans made by Quiver's recorder, as the serving path makes them.
    recorder = SpanRecorder(serving, "quiver_server", "0.1.0")
    call = recorder.start("recorded", SpanKind.SERVER, None, {"quiver.entities": 3})
    child = call.begin("child", attributes={"db.system": "sqlite"})
    call.end(child)
    call.finish()
    return list(exporter.get_finished_spans())


def test_encoding_matches_the_sdk() -> None:
    batch = spans()
    assert len(batch) == 6
    expected = encode_spans(batch)
    ours = trace_service_pb2.ExportTraceServiceRequest()
    ours.ParseFromString(Encoder().request(batch))
    assert ours == expected


def test_cached_encodings_stay_correct_across_batches() -> None:
    encoder = Encoder()
    batch = spans()
    for _ in range(3):
        ours = trace_service_pb2.ExportTraceServiceRequest()
        ours.ParseFromString(encoder.request(batch))
        assert ours == encode_spans(batch)
    assert encoder.request([]) == b""
