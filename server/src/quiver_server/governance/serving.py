"""Governance calls of the gRPC servers: offline erasure behind DeleteEntities."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from quiver import FeatureView
from quiver.errors import FailedPreconditionError
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver_server.governance.erasure import Eraser
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.who import call_principal
from quiver_server.online.base import OnlineStore
from quiver_server.registry.snapshot import Snapshot


def erase_entities(
    paths: GovernancePaths | None,
    snapshot: Snapshot,
    store: OnlineStore,
    entities: Mapping[str, Sequence[Any]],
    views: Sequence[str],
    *,
    authorize: Callable[[list[FeatureView]], None] | None = None,
) -> pb.DeleteEntitiesResponse:
    """Erase entities online and offline in one call (DeleteEntities with offline set).

    `authorize` is called with the views to erase from before anything is written.
    """
    if paths is None:
        raise FailedPreconditionError(
            "this server was started without the offline store; offline erasure is unavailable",
            reason="OFFLINE_ERASURE_UNAVAILABLE",
        )
    result = Eraser(paths, snapshot, store, call_principal()).erase(
        entities, views, authorize=authorize
    )
    return pb.DeleteEntitiesResponse(
        rows_deleted=result.online_rows_deleted,
        feature_views=result.feature_views,
        erasure_id=result.erasure_id,
        offline_rows_deleted=result.rows_removed,
        offline_files_rewritten=result.files_rewritten,
        datasets_affected=result.datasets_affected,
    )
