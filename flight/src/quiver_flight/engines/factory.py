"""The training-set engine `offline_store.engine` names."""

from __future__ import annotations

import time
from collections.abc import Callable

from quiver_flight.engines.base import TrainingEngine
from quiver_flight.engines.local import LocalTrainingEngine
from quiver_flight.pit import Exclusions, PointInTimeEngine
from quiver_server.config import QuiverConfig


def training_engine(
    config: QuiverConfig, *, cache_bytes: int, clock: Callable[[], float] = time.time,
    exclusions: Exclusions | None = None,
) -> TrainingEngine:
    """The engine of `config`; the Spark one is imported only when configured.

    `exclusions` (pending erasures) are left out of every history either engine reads.
    """
    pit = PointInTimeEngine(
        config.offline_root, cache_bytes=cache_bytes, batch_rows=config.flight.batch_rows,
        exclusions=exclusions,
    )
    if config.offline_store.engine == "spark":
        from quiver_flight.engines.spark import SparkTrainingEngine

        return SparkTrainingEngine(pit, config.offline_store.spark, clock)
    return LocalTrainingEngine(pit)
