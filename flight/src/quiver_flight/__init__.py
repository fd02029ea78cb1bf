"""Quiver's Arrow Flight server: training sets with exact point-in-time joins.

- `quiver_flight.pit`: the point-in-time engine (`PointInTimeEngine`).
- `quiver_flight.history`, `keys`, `features`, `timestamps`: how a view's
  history is indexed and searched.
- `quiver_flight.spines`, `parquet_spines`, `spine_paths`: uploaded spines,
  and Parquet spines named by path inside the spine directory.
- `quiver_flight.training`: planning training sets into signed partitions;
  `tickets`: the keys that sign them.
- `quiver_flight.server`: the Flight server (`create_flight_server`, `serve`);
  `errors` (the status every failure carries), `limits` (concurrent calls),
  `health` (readiness on grpc.health.v1), `periodic` (background jobs).
"""

from __future__ import annotations

from quiver_flight.pit import PointInTimeEngine
from quiver_flight.server import create_flight_server, serve

__all__ = ["PointInTimeEngine", "create_flight_server", "serve"]
