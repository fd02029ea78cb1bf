"""`InstrumentedOnlineStore`: spans and metrics around any `OnlineStore`.

Spans carry ``db.system`` / ``db.system.name`` (sqlite or aerospike), the
operation and sizes: how many views, entities and features. Never feature values
or entity keys: keys are customer identifiers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.trace import SpanKind, Tracer

from quiver_server.online.base import (
    OnlineStore,
    ViewRead,
    ViewReadResult,
    ViewTable,
    WriteBatch,
    WriteResult,
)
from quiver_server.telemetry.metrics import OnlineMetrics
from quiver_server.telemetry.scope import current_scope


class InstrumentedOnlineStore:
    """Delegates to `store`; times every call and, in a traced call, adds a child span.

    Spans are made only inside a traced call (the interceptor's scope), so
    background work such as health checks produces none.
    """

    def __init__(
        self, store: OnlineStore, system: str, tracer: Tracer | None, metrics: OnlineMetrics | None
    ) -> None:
        self.inner = store
        self.system = system
        self._tracer = tracer
        self._metrics = metrics
        self._durations: dict[str, Any] = {}

    def read(self, reads: Sequence[ViewRead]) -> list[ViewReadResult]:
        entities = max((len(r.keys) for r in reads), default=0)
        attributes = {
            "quiver.views": len(reads),
            "quiver.entities": entities,
            "quiver.features": sum(len(r.features) for r in reads),
        }
        results: list[ViewReadResult] = self._call("read", attributes, self.inner.read, reads)
        return results

    def write(self, table: ViewTable, batch: WriteBatch) -> WriteResult:
        attributes = {"quiver.feature_view": table.name, "quiver.rows": len(batch)}
        result: WriteResult = self._call("write", attributes, self.inner.write, table, batch)
        return result

    def delete(self, table: ViewTable, keys: Sequence[bytes]) -> int:
        attributes = {"quiver.feature_view": table.name, "quiver.entities": len(keys)}
        deleted: int = self._call("delete", attributes, self.inner.delete, table, keys)
        return deleted

    def healthy(self) -> bool:
        return self.inner.healthy()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Store-specific extras (e.g. SQLite's path) stay reachable.
        return getattr(self.inner, name)

    def _call(self, operation: str, attributes: dict[str, Any], function: Any, *args: Any) -> Any:
        start = time.perf_counter()
        scope = current_scope()
        span = None
        if self._tracer is not None and scope is not None and scope.tracer is not None:
            span = self._tracer.start_as_current_span(
                f"online_store.{operation}",
                kind=SpanKind.CLIENT,
                attributes={
                    "db.system": self.system, "db.system.name": self.system,
                    "db.operation.name": operation, **attributes,
                },
            )
        try:
            if span is None:
                return function(*args)
            with span:
                return function(*args)
        except Exception as exc:
            if self._metrics is not None:
                self._metrics.store_errors.labels(self.system, operation, type(exc).__name__).inc()
            raise
        finally:
            if self._metrics is not None:
                child = self._durations.get(operation)
                if child is None:
                    child = self._durations[operation] = self._metrics.store_duration.labels(
                        self.system, operation
                    )
                child.observe(time.perf_counter() - start)


def store_system(store: OnlineStore, configured: str) -> str:
    """db.system of a store: the configured type, unless the store says otherwise."""
    return str(getattr(store, "db_system", configured))
