"""Tracing settings: quiver.yaml first, then the standard OTEL_* variables, then defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from quiver.errors import InvalidArgumentError
from quiver_server.config import QuiverConfig, TracingConfig, load_config
from quiver_server.telemetry import setup_telemetry
from quiver_server.telemetry.grpc_server import split_method
from quiver_server.telemetry.tracing import (
    build_exporter,
    build_sampler,
    build_tracer_provider,
    exporter_name,
    http_traces_url,
    service_name,
    tracing_enabled,
)


def tracing(**fields: Any) -> TracingConfig:
    return TracingConfig.model_validate(fields)


def test_off_by_default() -> None:
    assert not tracing_enabled(tracing(), {})


def test_on_from_the_file_or_from_otel_traces_exporter() -> None:
    assert tracing_enabled(tracing(enabled=True), {})
    assert tracing_enabled(tracing(), {"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing_enabled(tracing(), {"OTEL_TRACES_EXPORTER": "none"})
    # Written in the file, the file wins.
    assert not tracing_enabled(tracing(enabled=False), {"OTEL_TRACES_EXPORTER": "otlp"})


def test_otel_sdk_disabled_always_wins() -> None:
    assert not tracing_enabled(tracing(enabled=True), {"OTEL_SDK_DISABLED": "true"})


@pytest.mark.parametrize(("fields", "env", "expected"), [
    ({}, {}, "otlp_grpc"),
    ({}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "otlp_http"),
    ({}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "otlp_http"),
    ({}, {"OTEL_TRACES_EXPORTER": "console"}, "console"),
    ({"exporter": "otlp_grpc"}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "otlp_grpc"),
    ({"exporter": "console"}, {}, "console"),
])
def test_exporter_choice(fields: dict[str, Any], env: dict[str, str], expected: str) -> None:
    assert exporter_name(tracing(**fields), env) == expected


def test_unsupported_otel_settings_name_the_variable_and_allowed_values() -> None:
    with pytest.raises(InvalidArgumentError, match="OTEL_TRACES_EXPORTER.*zipkin.*otlp, console"):
        exporter_name(tracing(), {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(InvalidArgumentError, match="OTEL_EXPORTER_OTLP_PROTOCOL.*http/json"):
        exporter_name(tracing(), {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(InvalidArgumentError, match="OTEL_TRACES_SAMPLER.*jaeger_remote"):
        build_sampler(tracing(), {"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    with pytest.raises(InvalidArgumentError, match="OTEL_TRACES_SAMPLER_ARG.*'1.5'"):
        build_sampler(tracing(), {"OTEL_TRACES_SAMPLER": "traceidratio",
                                  "OTEL_TRACES_SAMPLER_ARG": "1.5"})


def test_sampling_is_parent_based_ratio() -> None:
    sampler = build_sampler(tracing(sampling_ratio=0.25), {"OTEL_TRACES_SAMPLER": "always_off"})
    assert isinstance(sampler, ParentBased)
    assert "TraceIdRatioBased{0.25}" in sampler.get_description()


def test_sampling_from_otel_variables_when_the_file_is_silent() -> None:
    sampler = build_sampler(tracing(), {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                        "OTEL_TRACES_SAMPLER_ARG": "0.1"})
    assert "TraceIdRatioBased{0.1}" in sampler.get_description()
    plain = build_sampler(tracing(), {"OTEL_TRACES_SAMPLER": "traceidratio",
                                      "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    assert isinstance(plain, TraceIdRatioBased)
    assert "AlwaysOnSampler" in build_sampler(tracing(), {}).get_description()  # ratio 1.0
    assert "AlwaysOffSampler" in build_sampler(
        tracing(), {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}).get_description()


def test_service_name() -> None:
    assert service_name(tracing(), "serving", {}) == "quiver-serving"
    assert service_name(tracing(), "flight", {"OTEL_SERVICE_NAME": "fraud-fs"}) == "fraud-fs"
    assert service_name(tracing(service_name="mine"), "flight", {"OTEL_SERVICE_NAME": "x"}) == "mine"


def test_exporters() -> None:
    assert isinstance(build_exporter(tracing(exporter="console"), {}), ConsoleSpanExporter)
    grpc_exporter = build_exporter(tracing(endpoint="http://collector:4317"), {})
    assert isinstance(grpc_exporter, GrpcExporter)
    http_exporter = build_exporter(tracing(exporter="otlp_http", endpoint="http://c:4318"), {})
    assert isinstance(http_exporter, HttpExporter)
    assert http_exporter._endpoint == "http://c:4318/v1/traces"
    for exporter in (grpc_exporter, http_exporter):
        exporter.shutdown()


def test_http_endpoint_gets_the_traces_path_only_when_it_has_none() -> None:
    assert http_traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert http_traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert http_traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"


def test_resource_names_the_service_and_component(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    provider = build_tracer_provider(tracing(exporter="console"), "flight", {})
    attributes = provider.resource.attributes
    assert attributes["service.name"] == "quiver-flight"
    assert attributes["quiver.component"] == "flight"
    assert attributes["deployment.environment"] == "staging"
    provider.shutdown()


def test_everything_off_installs_nothing(tmp_path: Path) -> None:
    (tmp_path / "quiver.yaml").write_text(
        "project: p\n"
        "telemetry:\n  metrics: {enabled: false}\n  logging: {access_log: false}\n"
    )
    config = load_config(tmp_path, env={})
    telemetry = setup_telemetry(config, "serving", env={})
    assert telemetry.tracer is None and telemetry.metrics is None
    assert telemetry.server_interceptors() == []
    assert telemetry.flight_middleware() == {}
    store: Any = object()
    assert telemetry.instrument_store(store) is store


def test_defaults_are_metrics_and_access_log_without_tracing(tmp_path: Path) -> None:
    (tmp_path / "quiver.yaml").write_text("project: p\n")
    config: QuiverConfig = load_config(tmp_path, env={})
    telemetry = setup_telemetry(config, "serving", env={})
    assert telemetry.tracer is None
    assert telemetry.metrics is not None and telemetry.access_log
    assert len(telemetry.server_interceptors()) == 1


def test_split_method() -> None:
    assert split_method("/quiver.serving.v1.FeatureServingService/GetOnlineFeatures") == (
        "quiver.serving.v1.FeatureServingService", "GetOnlineFeatures")
