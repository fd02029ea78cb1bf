"""Feature monitoring: profiles, drift, freshness, metrics and the HTML report.

One module per job:

- `summary`: `FeatureSummary`, one feature's mergeable counts, moments and
  DataSketches sketches;
- `profile`: `ViewProfile`, a view's summaries from one source and window;
- `storage`: `ProfileStore`, append-only profile files under the offline store root;
- `sinks`: where profiles are built (materialization, push, sampled lookups);
- `training_sets`: profiles of training sets as they stream;
- `history`: profiles of the offline history, on demand;
- `drift`: PSI, Jensen-Shannon and null-rate change between two summaries;
- `monitor`: `run_monitor`, the `quiver monitor` computation;
- `metrics`: the Prometheus collector exporting the latest run;
- `report`: the self-contained HTML report.

See docs/monitoring.md.
"""

from __future__ import annotations

__all__: list[str] = []
