"""Tracing, metrics and access logs for Quiver's servers (docs/observability.md).

Telemetry enters at the edges: a gRPC server interceptor, Flight server
middleware, a wrapper around the online store, and a few decorators
(`quiver_server.telemetry.hooks`) on the read path, push and materialization.
`setup_telemetry` builds it from `telemetry` in quiver.yaml and the standard
OTEL_* variables; when tracing, metrics and the access log are all off, no
interceptor is installed, and the decorators on business code cost one
context-variable lookup each.
"""

from __future__ import annotations

from quiver_server.telemetry.metrics import Metrics, SupervisorMetrics
from quiver_server.telemetry.setup import (
    Telemetry,
    install_telemetry,
    installed_telemetry,
    setup_telemetry,
)

__all__ = [
    "Metrics",
    "SupervisorMetrics",
    "Telemetry",
    "install_telemetry",
    "installed_telemetry",
    "setup_telemetry",
]
