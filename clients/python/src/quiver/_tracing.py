"""Opt-in OpenTelemetry tracing for the clients (``OnlineClient(tracing=True)``,
``TrainingClient(tracing=True)``).

A client span per call (kind CLIENT, named as `quiver.tracing` says) whose
context travels to the server as W3C ``traceparent``: in gRPC metadata for
`OnlineClient`, in Flight headers for `TrainingClient`. The server's spans join
the caller's trace. Spans go to the tracer provider the application configured
(``opentelemetry.trace.set_tracer_provider``), or to the one passed in.

The client package does not depend on OpenTelemetry: this module is imported
only when tracing is asked for, and says what to install when the API is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import grpc
from pyarrow import flight

from quiver.status import flight_error_code
from quiver.tracing import FLIGHT_SERVICE, flight_method, peer_attributes, rpc_attributes

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "tracing=... needs the OpenTelemetry API, which the quiver client installs only with "
        "its tracing extra: pip install opentelemetry-api (plus opentelemetry-sdk and an "
        "exporter, e.g. opentelemetry-exporter-otlp, to send the spans somewhere)"
    ) from exc

INSTRUMENTATION_SCOPE = "quiver"


def tracer_for(provider: TracerProvider | None) -> Tracer:
    from quiver import __version__

    return trace.get_tracer(INSTRUMENTATION_SCOPE, __version__, tracer_provider=provider)


def start_client_span(
    tracer: Tracer, service: str, method: str, peer: dict[str, Any]
) -> tuple[trace.Span, dict[str, str]]:
    """A client span for ``service/method`` and the headers that carry it (W3C traceparent)."""
    span = tracer.start_span(
        f"{service}/{method}", kind=SpanKind.CLIENT,
        attributes={**rpc_attributes(service, method), **peer},
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, carrier


def finish_client_span(span: trace.Span, code: grpc.StatusCode, details: str | None) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    span.set_attribute("rpc.response.status_code", code.name)
    if code is not grpc.StatusCode.OK:
        span.set_attribute("error.type", code.name)
        span.set_status(Status(StatusCode.ERROR, details or code.name))
    span.end()


# -- gRPC ---------------------------------------------------------------------------


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class CallDetails(_CallDetails, grpc.ClientCallDetails):
    """grpc.ClientCallDetails with the trace context added to `metadata`."""


class TracingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Starts the client span and injects its context into the call's metadata."""

    def __init__(self, target: str, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = tracer_for(tracer_provider)
        self._peer = peer_attributes(target)

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = (method.decode() if isinstance(method, bytes) else method).lstrip("/")
        service, _, method_name = name.rpartition("/")
        span, carrier = start_client_span(self._tracer, service, method_name, self._peer)
        metadata = list(client_call_details.metadata or ())
        metadata.extend(carrier.items())
        details = CallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
            client_call_details.compression,
        )
        try:
            outcome = continuation(details, request)
        except Exception as error:
            finish_client_span(span, grpc.StatusCode.UNKNOWN, str(error))
            raise
        outcome.add_done_callback(lambda call: _finish_call(span, call))
        return outcome


def _finish_call(span: trace.Span, call: Any) -> None:
    try:
        code = call.code()
        details = call.details()
    except Exception:  # a cancelled future has no status
        code, details = grpc.StatusCode.CANCELLED, "cancelled"
    finish_client_span(span, code or grpc.StatusCode.UNKNOWN, details)


def client_interceptor(
    target: str, tracing: bool | TracerProvider
) -> grpc.UnaryUnaryClientInterceptor:
    """The interceptor `OnlineClient(tracing=...)` installs: True means the global provider."""
    return TracingInterceptor(target, None if tracing is True else tracing)  # type: ignore[arg-type]


# -- Flight -------------------------------------------------------------------------


class TracingClientMiddlewareFactory(flight.ClientMiddlewareFactory):  # type: ignore[misc]
    """Pass to ``pyarrow.flight.FlightClient(..., middleware=[...])``.

    Each Flight call gets a client span, a child of whatever span is current when
    the call starts; it ends when the call completes (for ``do_get``, when the
    stream is read to the end or closed).

    Args:
        target: ``host:port`` of the server, recorded as ``server.address``/``server.port``.
        tracer_provider: Where spans go; default the globally configured provider.
    """

    def __init__(self, target: str = "", tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = tracer_for(tracer_provider)
        self._peer = peer_attributes(target)

    def start_call(self, info: flight.CallInfo) -> TracingClientMiddleware:
        span, headers = start_client_span(
            self._tracer, FLIGHT_SERVICE, flight_method(info.method), self._peer
        )
        return TracingClientMiddleware(span, headers)


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
