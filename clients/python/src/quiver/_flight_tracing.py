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

import grpc
from pyarrow import flight

from quiver._status import flight_error_code
from quiver._tracing import finish_client_span, peer_attributes, start_client_span, tracer_for

try:
    from opentelemetry import trace
    from opentelemetry.trace import TracerProvider
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
        self._peer = peer_attributes(target)

    def start_call(self, info: flight.CallInfo) -> TracingClientMiddleware:
        method = METHOD_NAMES.get(info.method, str(info.method))
        return TracingClientMiddleware(*start_client_span(self._tracer, FLIGHT_SERVICE, method, self._peer))


class TracingClientMiddleware(flight.ClientMiddleware):  # type: ignore[misc]
    def __init__(self, span: trace.Span, headers: dict[str, str]) -> None:
        self.span = span
        self._headers = headers

    def sending_headers(self) -> dict[str, str]:
        return self._headers

    def call_completed(self, exception: BaseException | None) -> None:
        # The same status attributes as gRPC client spans, from the rich status.
        if exception is None:
            finish_client_span(self.span, grpc.StatusCode.OK, None)
        else:
            message = str(exception).split("\n", 1)[0]
            finish_client_span(self.span, flight_error_code(exception), message)
