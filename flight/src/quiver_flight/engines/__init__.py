"""Training-set engines: where a planned training set's rows are computed.

`TrainingEngine` is what the Flight service needs from an engine. Two
implement it:

- `LocalTrainingEngine` (``offline_store.engine: local``, the default)
  computes each partition in the Flight server when its ticket is served,
  from history indexes held in memory (`quiver_flight.pit`);
- `SparkTrainingEngine` (``offline_store.engine: spark``) runs the whole
  point-in-time join as one Spark job while planning, writes the result as
  one Parquet directory per partition under the offline store, and serves a
  ticket by streaming its directory; the Flight server holds no history.

Both follow the same rules and give the same rows cell for cell. An engine
computes the point-in-time join only; on-demand views and transforms run on
its batches in the Flight server (`quiver_flight.transformed`), the same for
both. A ticket planned by either can be served by any replica sharing the
offline store.
"""

from __future__ import annotations

from quiver_flight.engines.base import Staged, TrainingEngine, TrainingJob
from quiver_flight.engines.local import LocalTrainingEngine

__all__ = ["LocalTrainingEngine", "Staged", "TrainingEngine", "TrainingJob"]
