"""The gRPC server interceptor: one server span, one latency sample and one access-log line per RPC.

Spans follow OpenTelemetry's RPC semantic conventions: named
``<package>.<Service>/<Method>``, kind SERVER, the parent taken from the W3C
``traceparent`` metadata (through the globally configured propagators), with
``rpc.system.name``/``rpc.method``/``rpc.response.status_code``, plus the older
``rpc.system``/``rpc.service``/``rpc.grpc.status_code`` many backends still key
on. Only server-side failures (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
INTERNAL, UNAVAILABLE, DATA_LOSS) mark the span as an error; a caller's bad
request does not.

Only unary-unary methods are wrapped (all of Quiver's); streaming ones (health
Watch, reflection) pass through untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc
import structlog
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from quiver_server.telemetry.metrics import OnlineMetrics, RpcMetrics
from quiver_server.telemetry.recorder import RecordedCall, SpanRecorder
from quiver_server.telemetry.scope import Scope, enter_scope, exit_scope

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

Behavior = Callable[[Any, grpc.ServicerContext], Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def split_method(path: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = path.lstrip("/").rpartition("/")
    return service, method


def trace_id_from_traceparent(value: str | bytes | None) -> str | None:
    """The trace id of a W3C traceparent (``00-<32 hex>-<16 hex>-<2 hex>``), or None."""
    if not isinstance(value, str) or len(value) < 55 or value[2] != "-":
        return None
    trace_id = value[3:35]
    if trace_id == "0" * 32:
        return None
    try:
        int(trace_id, 16)
    except ValueError:
        return None
    return trace_id


class TelemetryInterceptor(grpc.ServerInterceptor):
    """Tracing (if a recorder is given), RPC metrics (if given) and the access log.

    Installed only when at least one of them is on; see `Telemetry.server_interceptors`.
    """

    def __init__(
        self,
        *,
        recorder: SpanRecorder | None,
        rpc: RpcMetrics | None,
        online: OnlineMetrics | None,
        access_log: bool,
    ) -> None:
        self._recorder = recorder
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
        attributes = {
            "rpc.system.name": "grpc", "rpc.method": span_name,
            "rpc.system": "grpc", "rpc.service": service,
        }
        size_field, size_name = _SIZES.get(method, (None, None))
        quiet = service.startswith(_QUIET_SERVICES)
        recorder, rpc, online = self._recorder, self._rpc, self._online
        log_enabled = self._access_log
        trace_headers = self._trace_headers
        durations: dict[grpc.StatusCode, Any] = {}
        entities = online.entities if online is not None and method == "GetOnlineFeatures" else None

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            carrier = dict(context.invocation_metadata() or ())
            scope = Scope(None, online)
            call = None
            tokens = None
            if recorder is not None:
                parent = (
                    propagate.extract(carrier) if not trace_headers.isdisjoint(carrier) else None
                )
                call = recorder.start(span_name, SpanKind.SERVER, parent, attributes)
                scope.call = call
                tokens = call.activate()
            else:
                scope.remote_trace_id = trace_id_from_traceparent(carrier.get("traceparent"))
            token = enter_scope(scope)
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
                if rpc is not None:
                    child = durations.get(code)
                    if child is None:
                        child = durations[code] = rpc.duration.labels(service, method, code.name)
                    if call is not None and call.sampled:
                        child.observe(seconds, {"trace_id": format(call.trace_id, "032x")})
                    else:
                        child.observe(seconds)
                if entities is not None and size is not None:
                    entities.observe(size)
                if call is not None:
                    _end_call(call, context, code, size_name, size)
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
                exit_scope(token)
                if tokens is not None:
                    RecordedCall.deactivate(tokens)

        return behavior


def _end_call(
    call: RecordedCall,
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    size_name: str | None,
    size: int | None,
) -> None:
    if call.sampled:
        attributes = call.attributes
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
                call.set_status(Status(StatusCode.ERROR, message or code.name))
    call.finish()
