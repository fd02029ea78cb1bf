"""Flight server middleware: the Flight half of what `grpc_server` does for gRPC.

Per call: a SERVER span named ``arrow.flight.protocol.FlightService/<Method>``
whose parent comes from the ``traceparent`` header, a `quiver_rpc_duration_seconds`
sample and an access-log line, all from the middleware alone.

Arrow enters Python afresh for the middleware, the handler and every step of a
``do_get`` generator, so a context variable set in one is gone in the next.
Two small hooks therefore make the call's span current where the server's own
code runs, so that spans it opens (`quiver_server.telemetry.hooks.traced`)
become children of the call's span:

    class QuiverFlightServer(flight.FlightServerBase):
        def __init__(self, ..., telemetry: Telemetry):
            super().__init__(location, middleware=telemetry.flight_middleware())

        @traced_flight_handler                 # on do_put, get_flight_info, do_get, ...
        def do_get(self, context, ticket):
            ...
            return flight.GeneratorStream(schema, count_batches(batches))

        @traced_flight_handler
        def do_put(self, context, descriptor, reader, writer):
            for batch in count_batches(chunk.data for chunk in reader): ...

`count_batches` resumes the call's context around each step of the stream and
adds rows, bytes and batches to the span and to
`quiver_flight_{rows,bytes,batches}_streamed_total`. With telemetry off,
`flight_middleware()` is empty and both hooks cost one lookup per call.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import grpc
import pyarrow as pa
import structlog
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from pyarrow import flight

from quiver.status import flight_error_code
from quiver.tracing import FLIGHT_SERVICE, flight_method
from quiver_server.telemetry.grpc_server import SERVER_ERROR_CODES, trace_id_from_traceparent
from quiver_server.telemetry.metrics import FlightMetrics, RpcMetrics
from quiver_server.telemetry.recorder import RecordedCall, SpanRecorder
from quiver_server.telemetry.scope import Scope, current_scope, enter_scope, exit_scope

MIDDLEWARE_KEY = "quiver.telemetry"

access_log = structlog.get_logger("quiver.access")

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class StreamStats:
    """Arrow data one Flight call moved."""

    method: str
    flight: FlightMetrics | None
    batches: int = 0
    rows: int = 0
    bytes: int = 0


def status_of(exception: BaseException | None) -> str:
    """The gRPC code name a Flight call ended with (the rich status's code wins)."""
    return "OK" if exception is None else flight_error_code(exception).name


def traced_flight_handler(handler: Callable[Concatenate[S, Any, P], R]) -> Callable[Concatenate[S, Any, P], R]:
    """Run a FlightServerBase method ``(self, context, ...)`` inside its call's span and scope."""

    @functools.wraps(handler)
    def wrapper(self: S, context: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        middleware = context.get_middleware(MIDDLEWARE_KEY)
        if middleware is None:
            return handler(self, context, *args, **kwargs)
        with activate(middleware.scope):
            return handler(self, context, *args, **kwargs)

    return cast("Callable[Concatenate[S, Any, P], R]", wrapper)


@contextlib.contextmanager
def activate(scope: Scope) -> Iterator[None]:
    """Make `scope` (and its call's span) current for the block."""
    token = enter_scope(scope)
    tokens = scope.call.activate() if scope.call is not None else None
    try:
        yield
    finally:
        if tokens is not None:
            RecordedCall.deactivate(tokens)
        exit_scope(token)


def count_batches(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """`batches`, counted for the current Flight call, with its span current at each step.

    Call it where the call's scope is current (inside a `traced_flight_handler`);
    elsewhere it returns the batches untouched.
    """
    scope = current_scope()
    if scope is None or scope.stream is None:
        return iter(batches)
    return _counted(iter(batches), scope, scope.stream)


def _counted(
    batches: Iterator[pa.RecordBatch], scope: Scope, stats: StreamStats
) -> Iterator[pa.RecordBatch]:
    children = None
    if stats.flight is not None:
        children = (
            stats.flight.batches.labels(stats.method),
            stats.flight.rows.labels(stats.method),
            stats.flight.bytes.labels(stats.method),
        )
    while True:
        with activate(scope):
            batch = next(batches, None)
        if batch is None:
            return
        rows, size = batch.num_rows, batch.nbytes
        stats.batches += 1
        stats.rows += rows
        stats.bytes += size
        if children is not None:
            children[0].inc()
            children[1].inc(rows)
            children[2].inc(size)
        yield batch


class TelemetryServerMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Pass as ``FlightServerBase(middleware={MIDDLEWARE_KEY: factory})``; see the module doc."""

    def __init__(
        self,
        *,
        recorder: SpanRecorder | None,
        rpc: RpcMetrics | None,
        flight: FlightMetrics | None,
        access_log: bool,
    ) -> None:
        self.recorder = recorder
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
        scope = Scope(None, None, stream=StreamStats(method, self.flight))
        if self.recorder is not None:
            name = f"{FLIGHT_SERVICE}/{method}"
            scope.call = self.recorder.start(name, SpanKind.SERVER, propagate.extract(carrier), {
                "rpc.system.name": "grpc", "rpc.method": name,
                "rpc.system": "grpc", "rpc.service": FLIGHT_SERVICE,
            })
        else:
            scope.remote_trace_id = trace_id_from_traceparent(carrier.get("traceparent"))
        return TelemetryServerMiddleware(self, method, scope)


class TelemetryServerMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    """One call's telemetry; a handler may reach it as
    ``context.get_middleware(MIDDLEWARE_KEY)`` and add attributes to ``scope.call``."""

    def __init__(
        self, factory: TelemetryServerMiddlewareFactory, method: str, scope: Scope
    ) -> None:
        self.factory = factory
        self.method = method
        self.scope = scope
        self._start = time.perf_counter()

    def sending_headers(self) -> dict[str, str]:
        return {}

    def call_completed(self, exception: BaseException | None) -> None:
        seconds = time.perf_counter() - self._start
        status = status_of(exception)
        stats = self.scope.stream
        call = self.scope.call
        factory = self.factory
        if factory.rpc is not None:
            child = factory.rpc.duration.labels(FLIGHT_SERVICE, self.method, status)
            if call is not None and call.sampled:
                child.observe(seconds, {"trace_id": format(call.trace_id, "032x")})
            else:
                child.observe(seconds)
        if call is not None:
            call.set_attribute("rpc.response.status_code", status)
            if stats is not None and stats.batches:
                call.attributes.update({
                    "quiver.batches": stats.batches, "quiver.rows": stats.rows,
                    "quiver.bytes": stats.bytes,
                })
            if status != "OK":
                call.set_attribute("error.type", status)
                if grpc.StatusCode[status] in SERVER_ERROR_CODES:
                    message = str(exception).split("\n", 1)[0] if exception else status
                    call.set_status(Status(StatusCode.ERROR, message))
        if factory.access_log:
            fields: dict[str, Any] = {
                "method": self.method, "service": FLIGHT_SERVICE, "status": status,
                "duration_ms": round(seconds * 1000, 3),
            }
            if stats is not None and stats.batches:
                fields.update(rows=stats.rows, bytes=stats.bytes, batches=stats.batches)
            with activate(self.scope):
                access_log.info("rpc", **fields)
        if call is not None:
            call.finish()
