"""Tracing, metrics and access logs for Quiver's servers (docs/observability.md).

Telemetry enters at the edges only: a gRPC server interceptor, Flight server
middleware, a wrapper around the online store, and the materialization job
runner (`quiver_server.telemetry.job`) at the CLI / CronJob entry. Spans are
the OpenTelemetry SDK's own, exported by its OTLP exporters. Business code
may mark a step with the one helper `traced(name)`.

`setup_telemetry` builds it from `telemetry` in quiver.yaml and the standard
OTEL_* variables; when tracing, metrics and the access log are all off, no
interceptor or middleware is installed at all.
"""

from __future__ import annotations

from quiver_server.telemetry.metrics import Metrics, SupervisorMetrics
from quiver_server.telemetry.setup import Telemetry, setup_telemetry
from quiver_server.telemetry.spans import traced

__all__ = ["Metrics", "SupervisorMetrics", "Telemetry", "setup_telemetry", "traced"]
