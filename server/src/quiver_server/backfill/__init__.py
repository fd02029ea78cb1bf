"""Backfills: a view's history computed from raw data by its `BatchTransformation`.

`backfill` runs the transformation over the windows of ``[start, end)`` its
current history version lacks and records them; a window already backfilled
is not computed again, so a repeated backfill changes nothing. A changed
transformation (or output schema) starts a new version instead: it is
computed in full for the window, materialized into the new version's own
online storage when the view is online, and only then made current, offline
and online together, in one registry commit.
"""

from __future__ import annotations

from quiver_server.backfill.run import BackfillResult, backfill

__all__ = ["BackfillResult", "backfill"]
