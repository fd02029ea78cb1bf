"""Opt-in OpenTelemetry tracing for Flight clients: W3C ``traceparent`` in Flight headers.

    from quiver._flight_tracing import TracingClientMiddlewareFactory

    client = pyarrow.flight.FlightClient(location, middleware=[TracingClientMiddlewareFactory()])

Each Flight call (``do_put``, ``get_flight_info``, ``do_get``, ...) gets a client
span named ``arrow.flight.protocol.FlightService/<Method>``, a child of whatever
span is current when the call starts; the server's spans join the same trace.
The span ends when the call completes (for ``do_get``, when the stream is read
to the end or closed).

Like `quiver._tracing`, this module needs the OpenTelemetry API and is imported
only when tracing is asked for.
"""

from __future__ import annotations

from typing import Any

from pyarrow import flight

from quiver._tracing import split_target, tracer_for

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - quiver._tracing raised first
    raise ImportError("Flight tracing needs the OpenTelemetry API: pip install opentelemetry-api") from exc

FLIGHT_SERVICE = "arrow.flight.protocol.FlightService"
METHOD_NAMES = {
    flight.FlightMethod.HANDSHAKE: "Handshake",
    flight.FlightMethod.LIST_FLIGHTS: "ListFlights",
    flight.FlightMethod.GET_FLIGHT_INFO: "GetFlightInfo",
    flight.FlightMethod.GET_SCHEMA: "GetSchema",
    flight.FlightMethod.DO_GET: "DoGet",
    flight.FlightMethod.DO_PUT: "DoPut",
    flight.FlightMethod.DO_ACTION: "DoAction",
    flight.FlightMethod.LIST_ACTIONS: "ListActions",
    flight.FlightMethod.DO_EXCHANGE: "DoExchange",
}


class TracingClientMiddlewareFactory(flight.ClientMiddlewareFactory):  # type: ignore[misc]
    """Pass to ``pyarrow.flight.FlightClient(..., middleware=[...])``.

    Args:
        target: ``host:port`` of the server, recorded as ``server.address``/``server.port``.
        tracer_provider: Where spans go; default the globally configured provider.
    """

    def __init__(self, target: str = "", tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = tracer_for(tracer_provider)
        self._peer: dict[str, Any] = {}
        if target:
            host, port = split_target(target.split("://")[-1])
            self._peer["server.address"] = host
            if port is not None:
                self._peer["server.port"] = port

    def start_call(self, info: flight.CallInfo) -> TracingClientMiddleware:
        method = METHOD_NAMES.get(info.method, str(info.method))
        name = f"{FLIGHT_SERVICE}/{method}"
        span = self._tracer.start_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system.name": "grpc", "rpc.method": name,
                "rpc.system": "grpc", "rpc.service": FLIGHT_SERVICE, **self._peer,
            },
        )
        return TracingClientMiddleware(span)


class TracingClientMiddleware(flight.ClientMiddleware):  # type: ignore[misc]
    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def sending_headers(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self.span))
        return carrier

    def call_completed(self, exception: BaseException | None) -> None:
        if exception is not None:
            self.span.set_attribute("error.type", type(exception).__name__)
            self.span.set_status(Status(StatusCode.ERROR, str(exception).split("\n", 1)[0]))
        self.span.end()
