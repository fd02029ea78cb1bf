"""`InstrumentedOnlineStore`: spans and metrics around any `OnlineStore`.

Spans carry ``db.system`` / ``db.system.name`` (sqlite or aerospike), the
operation and sizes: how many views, entities and features. Never feature values
or entity keys: keys are customer identifiers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
from quiver_server.telemetry.spans import current_tracer


class InstrumentedOnlineStore:
    """Delegates to `store`; times every call and, in a traced call, adds a child span.

    Spans are made only inside a traced and sampled call (the interceptor's),
    so background work such as health checks produces none.
    """

    def __init__(self, store: OnlineStore, system: str, metrics: OnlineMetrics | None) -> None:
        self.inner = store
        self.system = system
        self._metrics = metrics
        self._durations: dict[str, Any] = {}

    def read(self, reads: Sequence[ViewRead]) -> list[ViewReadResult]:
        def describe() -> dict[str, Any]:
            return {
                "quiver.views": len(reads),
                "quiver.entities": max((len(r.keys) for r in reads), default=0),
                "quiver.features": sum(len(r.features) for r in reads),
            }

        results: list[ViewReadResult] = self._call("read", describe, self.inner.read, reads)
        return results

    def write(self, table: ViewTable, batch: WriteBatch) -> WriteResult:
        def describe() -> dict[str, Any]:
            return {"quiver.feature_view": table.name, "quiver.rows": len(batch)}

        result: WriteResult = self._call("write", describe, self.inner.write, table, batch)
        return result

    def delete(self, table: ViewTable, keys: Sequence[bytes]) -> int:
        def describe() -> dict[str, Any]:
            return {"quiver.feature_view": table.name, "quiver.entities": len(keys)}

        deleted: int = self._call("delete", describe, self.inner.delete, table, keys)
        return deleted

    def healthy(self) -> bool:
        return self.inner.healthy()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Store-specific extras (e.g. SQLite's path) stay reachable.
        return getattr(self.inner, name)

    def _call(
        self, operation: str, describe: Callable[[], dict[str, Any]], function: Any, *args: Any
    ) -> Any:
        start = time.perf_counter()
        tracer = current_tracer()
        try:
            if tracer is None:
                return function(*args)
            return self._traced(tracer, operation, describe(), function, *args)
        except Exception as exc:
            if self._metrics is not None:
                self._metrics.store_errors.labels(self.system, operation, type(exc).__name__).inc()
            raise
        finally:
            if self._metrics is not None:
                series = self._durations.get(operation)
                if series is None:
                    series = self._durations[operation] = self._metrics.store_duration.labels(
                        self.system, operation
                    )
                series.observe(time.perf_counter() - start)


    def _traced(
        self, tracer: Tracer, operation: str, attributes: dict[str, Any], function: Any, *args: Any
    ) -> Any:
        attributes.update({
            "db.system": self.system, "db.system.name": self.system, "db.operation.name": operation,
        })
        with tracer.start_as_current_span(
            f"online_store.{operation}", kind=SpanKind.CLIENT, attributes=attributes
        ):
            return function(*args)
