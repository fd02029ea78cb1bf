"""Removing entities from the online store (privacy requests).

This module removes online rows; `quiver_server.governance.erasure` erases the
same entities from the offline history when asked to (``offline=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quiver import FeatureView
from quiver.errors import InvalidArgumentError
from quiver_server.echo import name_list
from quiver_server.online.base import OnlineStore
from quiver_server.online.keys import check_key_values, encode_keys
from quiver_server.registry.snapshot import Snapshot


@dataclass
class DeleteResult:
    rows_deleted: int
    feature_views: list[str]


def check_delete_count(count: int, max_entities: int) -> None:
    """INVALID_ARGUMENT when one request would delete more than `max_entities` entities."""
    if count > max_entities:
        raise InvalidArgumentError.for_field(
            "entities",
            f"{count} entities to delete; at most {max_entities} per request "
            f"(serving.max_delete_entities); send several requests",
            reason="INVALID_ENTITIES",
        )


def delete_entities(
    store: OnlineStore,
    snapshot: Snapshot,
    entities: Mapping[str, Sequence[Any]],
    views: Sequence[str] = (),
    *,
    authorize: Callable[[list[FeatureView]], None] | None = None,
) -> DeleteResult:
    """Delete the given entities' rows from `views` (default: every online view whose
    join keys are all given).

    `authorize` is called with the views once they are resolved, before their keys
    are checked and anything is deleted; it raises to refuse.
    """
    targets = target_views(snapshot, entities, views, online_only=True, authorize=authorize)
    deleted = 0
    for view in targets:
        if not view.online:
            continue
        keys = encode_keys(view.join_keys, [entities[k] for k in view.join_key_names])
        deleted += store.delete(snapshot.view_table(view.name), keys)
    return DeleteResult(deleted, [v.name for v in targets])


def target_views(
    snapshot: Snapshot,
    entities: Mapping[str, Sequence[Any]],
    views: Sequence[str],
    *,
    online_only: bool,
    authorize: Callable[[list[FeatureView]], None] | None = None,
) -> list[FeatureView]:
    """The views to delete from, with the entity columns checked against their keys.

    `authorize` is called with the views once they are resolved, before their keys
    are checked; it raises to refuse.

    Raises:
        InvalidArgumentError: no or ragged key columns, a key of the wrong type,
            a named view whose keys are not given, or no view keyed by them.
        NotFoundError: a named view does not exist.
    """
    if not entities:
        raise InvalidArgumentError.for_field("entities", "name at least one join key column")
    lengths = {name: len(values) for name, values in entities.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        described = name_list(f"{n}={c}" for n, c in sorted(lengths.items()))
        raise InvalidArgumentError.for_field(
            "entities", f"join key columns must be non-empty and the same length, got {described}"
        )
    if views:
        targets: list[FeatureView] = []
        for name in views:
            view = snapshot.feature_views.get(name)
            if view is None:
                # The views named before an unknown one are authorized first, so the
                # answer names the first view refused, whether or not it exists.
                if authorize is not None:
                    authorize(targets)
                snapshot.feature_view(name)  # raises NotFoundError naming it
            else:
                targets.append(view)
    else:
        targets = [
            v for v in snapshot.feature_views.values()
            if (v.online or not online_only) and set(v.join_key_names) <= set(entities)
        ]
        if not targets:
            raise InvalidArgumentError.for_field(
                "entities", f"no feature view is keyed by {name_list(sorted(entities))}"
            )
    # Authorized before the keys are checked: what a view's keys are is not told to a
    # caller who may not delete from it.
    if authorize is not None:
        authorize(targets)
    for view in targets:
        missing = [k for k in view.join_key_names if k not in entities]
        if missing:
            raise InvalidArgumentError.for_field(
                f"entities.{missing[0]}", f"feature view {view.name!r} needs join keys {missing}"
            )
        for key in view.join_keys:
            check_key_values(f"entities.{key.name}", key, entities[key.name])
    return targets
