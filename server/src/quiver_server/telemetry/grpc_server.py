"""The gRPC server interceptor: one server span, one latency sample and one access-log line per RPC.

Spans follow OpenTelemetry's RPC semantic conventions (names and attributes from
`quiver.tracing`): kind SERVER, the parent taken from the W3C ``traceparent``
metadata through the globally configured propagators, with
``rpc.response.status_code`` and the older ``rpc.grpc.status_code``. Only
server-side failures (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
UNAVAILABLE, DATA_LOSS) mark the span as an error; a caller's bad request does not.

Only unary-unary methods are wrapped (all of Quiver's); streaming ones (health
Watch, reflection) pass through untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc
import structlog
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from quiver.serving.v1 import serving_service_pb2 as serving_pb
from quiver.tracing import rpc_attributes
from quiver_server.telemetry.metrics import OnlineMetrics, RpcMetrics
from quiver_server.telemetry.spans import call_context, enter, leave

access_log = structlog.get_logger("quiver.access")

# Codes that mean the server failed (spans marked as errors), not the caller.
SERVER_ERROR_CODES = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
# Infrastructure services: counted in metrics, but their lines (probes every few
# seconds) go to the debug level.
_QUIET_SERVICES = ("grpc.health.", "grpc.reflection.")
# What the access log and the span report as the size of a call: response field -> name.
_SIZES = {
    "GetOnlineFeatures": ("entity_count", "entities"),
    "PushFeatures": ("rows", "rows"),
    "DeleteEntities": ("rows_deleted", "rows"),
}
def _describe_lookup(request: Any, response: Any) -> dict[str, Any]:
    return {"quiver.features": len(response.feature_names)}


def _describe_push(request: Any, response: Any) -> dict[str, Any]:
    return {
        "quiver.feature_view": request.feature_view,
        "quiver.push_target": serving_pb.PushTarget.Name(request.to).removeprefix("PUSH_TARGET_").lower(),
        "quiver.rows_superseded": response.rows_superseded,
    }


# More span attributes of a sampled call, from its request and response.
# Sizes and names only: never entity keys or feature values.
_DESCRIBE: dict[str, Callable[[Any, Any], dict[str, Any]]] = {
    "GetOnlineFeatures": _describe_lookup,
    "PushFeatures": _describe_push,
}

Behavior = Callable[[Any, grpc.ServicerContext], Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def split_method(path: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = path.lstrip("/").rpartition("/")
    return service, method


class TelemetryInterceptor(grpc.ServerInterceptor):
    """Tracing (if a tracer is given), RPC metrics (if given) and the access log.

    Installed only when at least one of them is on; see `Telemetry.server_interceptors`.
    """

    def __init__(
        self,
        *,
        tracer: Tracer | None,
        rpc: RpcMetrics | None,
        online: OnlineMetrics | None,
        access_log: bool,
    ) -> None:
        self._tracer = tracer
        self._rpc = rpc
        self._online = online
        self._access_log = access_log
        self._handlers: dict[str, tuple[Handler, Handler]] = {}
        # Headers the configured propagators read (traceparent, tracestate, baggage
        # by default): a call carrying none of them needs no extraction.
        self._trace_headers = frozenset(propagate.get_global_textmap().fields)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        path = handler_call_details.method
        cached = self._handlers.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(path, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._handlers[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, path: str, inner: Behavior) -> Behavior:
        service, method = split_method(path)
        span_name = path.lstrip("/")
        span_attributes = rpc_attributes(service, method)
        size_field, size_name = _SIZES.get(method, (None, None))
        quiet = service.startswith(_QUIET_SERVICES)
        tracer, rpc, log_enabled = self._tracer, self._rpc, self._access_log
        trace_headers = self._trace_headers
        durations: dict[grpc.StatusCode, Any] = {}
        online = self._online if method == "GetOnlineFeatures" else None
        describe = _DESCRIBE.get(method)

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            parent = None
            metadata = context.invocation_metadata()
            if metadata and not trace_headers.isdisjoint(key for key, _ in metadata):
                parent = propagate.extract(dict(metadata))
            span = None
            token = None
            if tracer is not None:
                span = tracer.start_span(span_name, parent, SpanKind.SERVER, span_attributes)
                # Unsampled, the span only lends its ids to log lines: no tracer for children.
                token = enter(call_context(span, tracer if span.is_recording() else None, parent))
            elif parent is not None:
                # Not tracing, but the caller is: log lines still carry its trace id.
                token = enter(parent)
            response = None
            try:
                response = inner(request, context)
                return response
            finally:
                seconds = time.perf_counter() - start
                code = context.code() or (  # type: ignore[attr-defined]
                    grpc.StatusCode.OK if response is not None else grpc.StatusCode.UNKNOWN
                )
                size = getattr(response, size_field) if size_field and response is not None else None
                sampled = span is not None and span.is_recording()
                if rpc is not None:
                    series = durations.get(code)
                    if series is None:
                        series = durations[code] = rpc.duration.labels(service, method, code.name)
                    if sampled:
                        trace_id = format(span.get_span_context().trace_id, "032x")  # type: ignore[union-attr]
                        series.observe(seconds, {"trace_id": trace_id})
                    else:
                        series.observe(seconds)
                if online is not None and response is not None:
                    online.entities.observe(size)
                if sampled:
                    attributes = describe(request, response) if describe and response else {}
                    _end_span(span, context, code, attributes, size_name, size)  # type: ignore[arg-type]
                if log_enabled:
                    fields: dict[str, Any] = {
                        "method": method, "service": service, "status": code.name,
                        "duration_ms": round(seconds * 1000, 3),
                    }
                    if size_name is not None and size is not None:
                        fields[size_name] = size
                    if code is not grpc.StatusCode.OK:
                        fields["peer"] = context.peer()
                    (access_log.debug if quiet else access_log.info)("rpc", **fields)
                if token is not None:
                    leave(token)
                if span is not None and not sampled:
                    span.end()

        return behavior


def _end_span(
    span: trace.Span,
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    attributes: dict[str, Any],
    size_name: str | None,
    size: int | None,
) -> None:
    attributes["rpc.grpc.status_code"] = code.value[0]
    attributes["rpc.response.status_code"] = code.name
    peer = context.peer()
    if peer.startswith(("ipv4:", "ipv6:")):
        host, _, port = peer.partition(":")[2].rpartition(":")
        attributes["network.peer.address"] = host.strip("[]")
        if port.isdigit():
            attributes["network.peer.port"] = int(port)
    if size_name is not None and size is not None:
        attributes[f"quiver.{size_name}"] = size
    if code is not grpc.StatusCode.OK:
        attributes["error.type"] = code.name
        if code in SERVER_ERROR_CODES:
            details = context.details()  # type: ignore[attr-defined]
            message = details.decode(errors="replace") if isinstance(details, bytes) else details
            span.set_status(Status(StatusCode.ERROR, message or code.name))
    span.set_attributes(attributes)
    span.end()
