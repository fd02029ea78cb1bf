"""A TracerProvider from `telemetry.tracing` in quiver.yaml and the standard OTEL_* variables.

Precedence, per setting: a value written in quiver.yaml (or its QUIVER_TELEMETRY__TRACING__*
override) wins; a setting the file leaves out comes from the OpenTelemetry variable that
covers it; then Quiver's default.

| setting        | quiver.yaml                  | OTEL_* fallback                                          | default          |
|----------------|------------------------------|----------------------------------------------------------|------------------|
| on/off         | tracing.enabled              | OTEL_TRACES_EXPORTER set and not "none"; OTEL_SDK_DISABLED=true forces off | off |
| exporter       | tracing.exporter             | OTEL_TRACES_EXPORTER (otlp, console) + OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL | otlp_grpc |
| endpoint       | tracing.endpoint             | OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT (read by the exporter) | localhost:4317 / :4318 |
| sampling       | tracing.sampling_ratio       | OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG             | parentbased_traceidratio 1.0 |
| service.name   | tracing.service_name         | OTEL_SERVICE_NAME                                        | quiver-<component> |

Headers, TLS files, timeouts and compression are left to the exporter, which reads the
OTEL_EXPORTER_OTLP_* variables itself. OTEL_RESOURCE_ATTRIBUTES is merged into the resource.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlparse

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from quiver.errors import InvalidArgumentError
from quiver_server.config import TracingConfig

ExporterName = Literal["otlp_grpc", "otlp_http", "console"]
EXPORT_BATCH_SPANS = 128
QUEUE_SPANS = 16_384

_SAMPLERS = (
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
)


def tracing_enabled(config: TracingConfig, env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if "enabled" in config.model_fields_set:
        return config.enabled
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return bool(exporter) and exporter != "none"


def exporter_name(config: TracingConfig, env: Mapping[str, str] = os.environ) -> ExporterName:
    if "exporter" in config.model_fields_set:
        return config.exporter
    chosen = env.get("OTEL_TRACES_EXPORTER", "").split(",")[0].strip().lower()
    if chosen == "console":
        return "console"
    if chosen not in ("", "otlp", "none"):
        raise InvalidArgumentError.for_field(
            "OTEL_TRACES_EXPORTER", f"{chosen!r} is not supported; allowed: otlp, console"
        )
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).strip().lower()
    if protocol == "grpc":
        return "otlp_grpc"
    if protocol == "http/protobuf":
        return "otlp_http"
    raise InvalidArgumentError.for_field(
        "OTEL_EXPORTER_OTLP_PROTOCOL", f"{protocol!r} is not supported; allowed: grpc, http/protobuf"
    )


def build_sampler(config: TracingConfig, env: Mapping[str, str] = os.environ) -> Sampler:
    """Parent-based trace-id ratio: a sampled caller's trace is always continued."""
    if "sampling_ratio" in config.model_fields_set or not env.get("OTEL_TRACES_SAMPLER"):
        return ParentBased(TraceIdRatioBased(config.sampling_ratio))
    name = env["OTEL_TRACES_SAMPLER"].strip().lower()
    if name not in _SAMPLERS:
        raise InvalidArgumentError.for_field(
            "OTEL_TRACES_SAMPLER", f"{name!r} is not supported; allowed: {', '.join(_SAMPLERS)}"
        )
    ratio = 1.0
    if name.endswith("traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise InvalidArgumentError.for_field(
                "OTEL_TRACES_SAMPLER_ARG", f"{raw!r} is not a ratio between 0 and 1"
            )
    root: Sampler = {
        "always_on": ALWAYS_ON, "always_off": ALWAYS_OFF, "traceidratio": TraceIdRatioBased(ratio),
    }[name.removeprefix("parentbased_")]
    return ParentBased(root) if name.startswith("parentbased_") else root


def service_name(config: TracingConfig, component: str, env: Mapping[str, str] = os.environ) -> str:
    return config.service_name or env.get("OTEL_SERVICE_NAME") or f"quiver-{component}"


def build_exporter(config: TracingConfig, env: Mapping[str, str] = os.environ) -> SpanExporter:
    """The SDK's own exporter for the configured name (OTLP exporters imported when used)."""
    name = exporter_name(config, env)
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint=config.endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(endpoint=http_traces_url(config.endpoint) if config.endpoint else None)


def http_traces_url(endpoint: str) -> str:
    """A base URL gets the OTLP traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does.

    So `endpoint: http://collector:4318` works for both exporters, as it does
    in the Helm chart; a URL that already has a path is used as given.
    """
    if urlparse(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def build_tracer_provider(
    config: TracingConfig,
    component: str,
    env: Mapping[str, str] = os.environ,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """The provider, with a batching processor in front of the configured exporter.

    Args:
        config: `telemetry.tracing`.
        component: serving, flight or materialize; names the default service.
        env: The environment to read OTEL_* settings from.
        exporter: Use this exporter instead of the configured one (tests).
    """
    from quiver import __version__

    resource = Resource.create({
        "service.name": service_name(config, component, env),
        "service.version": __version__,
        "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        "quiver.component": component,
    })
    provider = TracerProvider(resource=resource, sampler=build_sampler(config, env))
    # Encoding a batch holds the GIL; smaller batches than the SDK's 512 keep
    # each pause short, so the serving tail latency barely moves. A deeper queue
    # than the SDK's 2048 rides out bursts of thousands of lookups per second.
    # OTEL_BSP_* variables still override both.
    batch_size = None if env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") else EXPORT_BATCH_SPANS
    queue_size = None if env.get("OTEL_BSP_MAX_QUEUE_SIZE") else QUEUE_SPANS
    provider.add_span_processor(BatchSpanProcessor(
        exporter or build_exporter(config, env),
        max_queue_size=queue_size, max_export_batch_size=batch_size,
    ))
    return provider
