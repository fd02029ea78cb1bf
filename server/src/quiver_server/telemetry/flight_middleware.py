"""Flight server middleware: the Flight half of what `grpc_server` does for gRPC.

Per call: a SERVER span named ``arrow.flight.protocol.FlightService/<Method>``
whose parent comes from the ``traceparent`` header, a `quiver_rpc_duration_seconds`
sample and an access-log line, from the middleware alone.

Arrow enters Python afresh for the middleware and for the handler, so the
middleware cannot leave its span current for the handler. The Flight server's
one handler wrapper does it with `flight_call`, and passes what moved to
`flight_call_counter` (rows, bytes and batches go on the span and to
`quiver_flight_{rows,bytes,batches}_streamed_total`):

    with flight_call(context) as call:
        result = handler(...)           # `traced` spans nest under the call's span
        call.handled(result)            # a FlightInfo's partitions and rows

With telemetry off the server has no middleware and `flight_call` costs one lookup.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pyarrow as pa
import structlog
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from pyarrow import flight

from quiver.status import flight_error_code
from quiver.tracing import FLIGHT_SERVICE, flight_method, rpc_attributes
from quiver_server.telemetry.grpc_server import SERVER_ERROR_CODES
from quiver_server.telemetry.metrics import FlightMetrics, RpcMetrics
from quiver_server.telemetry.spans import call_context, enter, leave

MIDDLEWARE_KEY = "quiver.telemetry"

access_log = structlog.get_logger("quiver.access")


def status_of(exception: BaseException | None) -> str:
    """The gRPC code name a Flight call ended with (the rich status's code wins)."""
    return "OK" if exception is None else flight_error_code(exception).name


class FlightCall:
    """What one Flight call moved, and the context its handler runs in."""

    def __init__(
        self, method: str, flight_metrics: FlightMetrics | None, span: Span | None,
        context: Context | None,
    ) -> None:
        self.method = method
        self.span = span
        self.context = context
        self.batches = self.rows = self.bytes = 0
        self._series = None
        if flight_metrics is not None:
            self._series = (
                flight_metrics.batches.labels(method), flight_metrics.rows.labels(method),
                flight_metrics.bytes.labels(method),
            )

    def count(self, batch: pa.RecordBatch) -> None:
        """Count a record batch sent or received."""
        rows, size = batch.num_rows, batch.nbytes
        self.batches += 1
        self.rows += rows
        self.bytes += size
        if self._series is not None:
            self._series[0].inc()
            self._series[1].inc(rows)
            self._series[2].inc(size)

    def handled(self, result: object) -> None:
        """Note what the handler returned (a planned FlightInfo's size)."""
        if isinstance(result, flight.FlightInfo) and self.span is not None:
            self.span.set_attributes({
                "quiver.partitions": len(result.endpoints), "quiver.rows": result.total_records,
            })


class _NoCall(FlightCall):
    def __init__(self) -> None:
        super().__init__("", None, None, None)

    def count(self, batch: pa.RecordBatch) -> None:
        return None

    def handled(self, result: object) -> None:
        return None


NO_CALL: FlightCall = _NoCall()


@contextlib.contextmanager
def flight_call(context: flight.ServerCallContext) -> Iterator[FlightCall]:
    """The call's telemetry, its span current for the block (`NO_CALL` with telemetry off)."""
    middleware = context.get_middleware(MIDDLEWARE_KEY)
    if middleware is None:
        yield NO_CALL
        return
    call: FlightCall = middleware.call
    token = enter(call.context) if call.context is not None else None
    try:
        yield call
    finally:
        if token is not None:
            leave(token)


def flight_call_counter(
    context: flight.ServerCallContext,
) -> Callable[[pa.RecordBatch], None] | None:
    """The call's `FlightCall.count` for the batches it streams; None with telemetry off."""
    middleware = context.get_middleware(MIDDLEWARE_KEY)
    return None if middleware is None else middleware.call.count


class TelemetryServerMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Pass as ``FlightServerBase(middleware={MIDDLEWARE_KEY: factory})``; see the module doc."""

    def __init__(
        self,
        *,
        tracer: Tracer | None,
        rpc: RpcMetrics | None,
        flight: FlightMetrics | None,
        access_log: bool,
    ) -> None:
        self.tracer = tracer
        self.rpc = rpc
        self.flight = flight
        self.access_log = access_log

    def start_call(
        self, info: flight.CallInfo, headers: dict[str, list[Any]]
    ) -> TelemetryServerMiddleware:
        method = flight_method(info.method)
        carrier = {
            key: values[0] for key, values in headers.items()
            if values and isinstance(values[0], str)
        }
        parent = propagate.extract(carrier) if "traceparent" in carrier else None
        span = None
        context = parent  # not tracing: log lines still carry the caller's trace id
        if self.tracer is not None:
            span = self.tracer.start_span(
                f"{FLIGHT_SERVICE}/{method}", parent, SpanKind.SERVER,
                rpc_attributes(FLIGHT_SERVICE, method),
            )
            context = call_context(span, self.tracer if span.is_recording() else None, parent)
        return TelemetryServerMiddleware(self, FlightCall(method, self.flight, span, context))


class TelemetryServerMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    """One call's telemetry; handlers reach it through `flight_call`."""

    def __init__(self, factory: TelemetryServerMiddlewareFactory, call: FlightCall) -> None:
        self.factory = factory
        self.call = call
        self._start = time.perf_counter()

    def sending_headers(self) -> dict[str, str]:
        return {}

    def call_completed(self, exception: BaseException | None) -> None:
        seconds = time.perf_counter() - self._start
        status = status_of(exception)
        call, factory = self.call, self.factory
        span = call.span
        sampled = span is not None and span.is_recording()
        if factory.rpc is not None:
            series = factory.rpc.duration.labels(FLIGHT_SERVICE, call.method, status)
            if sampled:
                trace_id = format(span.get_span_context().trace_id, "032x")  # type: ignore[union-attr]
                series.observe(seconds, {"trace_id": trace_id})
            else:
                series.observe(seconds)
        if span is not None and sampled:
            attributes: dict[str, Any] = {"rpc.response.status_code": status}
            if call.batches:
                attributes.update({
                    "quiver.batches": call.batches, "quiver.rows": call.rows,
                    "quiver.bytes": call.bytes,
                })
            if status != "OK":
                attributes["error.type"] = status
                if grpc.StatusCode[status] in SERVER_ERROR_CODES:
                    message = str(exception).split("\n", 1)[0] if exception else status
                    span.set_status(Status(StatusCode.ERROR, message))
            span.set_attributes(attributes)
        if factory.access_log:
            fields: dict[str, Any] = {
                "method": call.method, "service": FLIGHT_SERVICE, "status": status,
                "duration_ms": round(seconds * 1000, 3),
            }
            if call.batches:
                fields.update(rows=call.rows, bytes=call.bytes, batches=call.batches)
            token = enter(call.context) if call.context is not None else None
            try:
                access_log.info("rpc", **fields)
            finally:
                if token is not None:
                    leave(token)
        if span is not None:
            span.end()
