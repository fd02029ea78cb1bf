"""The one access policy both servers enforce: which actions a principal may take on what.

A `Policy` is compiled from one registry version's permissions. Access is
denied unless a permission allows it. A permission applies to a principal
named in its ``principals`` (``"*"``: anyone authenticated) or a member of one
of its ``groups``, and allows its actions on what its resources match:

================  ============================================================
resource          matches
================  ============================================================
project           every view, feature, service and entity of the project
feature_view V    view V and its features
feature_service S service S and every feature S selects, however requested
tag k=v           views, services and entities tagged k=v, and features whose
                  view or own field carries the tag
================  ============================================================

Actions on data are checked per feature ("a request is allowed only if every
feature it touches is allowed"); pushes and deletes touch every feature of
their view. DESCRIBE of a view or service is checked on the object itself, so
a grant on a service does not reveal the rest of the views it reads from.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from quiver import Action, Entity, FeatureService, FeatureView, Field, Permission, Resource
from quiver_server.auth.principal import Principal

ANYONE = "*"


@dataclass(frozen=True)
class Grants:
    """What one principal may do: per action, the resources it was granted."""

    by_action: dict[Action, tuple[Resource, ...]]

    def resources(self, action: Action) -> tuple[Resource, ...]:
        return self.by_action.get(action, ())


class Policy:
    """The permissions of one registry version, ready to answer access questions."""

    def __init__(
        self,
        project: str,
        permissions: Iterable[Permission],
        services: dict[str, FeatureService] | None = None,
    ) -> None:
        self.project = project
        self.permissions = list(permissions)
        # Feature service name -> the "view:feature" refs it selects (views by
        # whole name, when a projection selects every feature of its view).
        self._service_refs: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        for name, service in (services or {}).items():
            refs = {f"{p.view}:{f}" for p in service.projections for f in p.features}
            whole = {p.view for p in service.projections if not p.features}
            self._service_refs[name] = (frozenset(refs), frozenset(whole))
        self._grants: dict[Principal, Grants] = {}
        self._lock = threading.Lock()

    def grants(self, principal: Principal) -> Grants:
        """The principal's grants, computed once per principal."""
        found = self._grants.get(principal)
        if found is not None:
            return found
        by_action: dict[Action, list[Resource]] = {}
        for permission in self.permissions:
            if not (
                ANYONE in permission.principals
                or principal.subject in permission.principals
                or not principal.groups.isdisjoint(permission.groups)
            ):
                continue
            for action in permission.actions:
                by_action.setdefault(action, []).extend(permission.resources)
        grants = Grants({a: tuple(dict.fromkeys(r)) for a, r in by_action.items()})
        with self._lock:
            if len(self._grants) > 10_000:
                self._grants.clear()
            self._grants[principal] = grants
        return grants

    # --- matching ------------------------------------------------------------------

    def _project(self, resource: Resource) -> bool:
        return resource.kind == "project" and resource.name in ("", self.project)

    def allows_feature(
        self, principal: Principal, action: Action, view: FeatureView, feature: Field
    ) -> bool:
        """May `principal` take `action` on one feature of `view`?"""
        for r in self.grants(principal).resources(action):
            if self._project(r):
                return True
            if r.kind == "feature_view" and r.name == view.name:
                return True
            if r.kind == "tag" and (view.tags.get(r.name) == r.value
                                    or feature.tags.get(r.name) == r.value):
                return True
            if r.kind == "feature_service":
                selected = self._service_refs.get(r.name)
                if selected is not None and (
                    view.name in selected[1] or f"{view.name}:{feature.name}" in selected[0]
                ):
                    return True
        return False

    def allows_view(self, principal: Principal, action: Action, name: str,
                    view: FeatureView | None) -> bool:
        """May `principal` take `action` on the view itself (DESCRIBE)?

        `view` is None for a name that does not exist: then only grants by
        name or on the whole project match, so the answer reveals nothing.
        """
        for r in self.grants(principal).resources(action):
            if self._project(r) or (r.kind == "feature_view" and r.name == name):
                return True
            if r.kind == "tag" and view is not None and view.tags.get(r.name) == r.value:
                return True
        return False

    def allows_service(self, principal: Principal, action: Action, name: str,
                       service: FeatureService | None) -> bool:
        """May `principal` take `action` on the service itself (DESCRIBE)?"""
        for r in self.grants(principal).resources(action):
            if self._project(r) or (r.kind == "feature_service" and r.name == name):
                return True
            if r.kind == "tag" and service is not None and service.tags.get(r.name) == r.value:
                return True
        return False

    def allows_entity(self, principal: Principal, action: Action, entity: Entity,
                      views: Iterable[FeatureView]) -> bool:
        """DESCRIBE of an entity: granted directly, or through a view that uses it."""
        for r in self.grants(principal).resources(action):
            if self._project(r) or (r.kind == "tag" and entity.tags.get(r.name) == r.value):
                return True
        return any(
            self.allows_view(principal, action, v.name, v)
            for v in views if any(e.name == entity.name for e in v.entities)
        )

    def allows_project(self, principal: Principal, action: Action) -> bool:
        """Is `action` granted on the whole project?"""
        return any(self._project(r) for r in self.grants(principal).resources(action))

    def allows_any(self, principal: Principal, action: Action) -> bool:
        """Is `action` granted on anything at all?"""
        return bool(self.grants(principal).resources(action))
