"""Access control as code: `Permission` objects in a feature repo.

`quiver apply` stores them in the registry; both servers enforce them when
authentication is on. Access is denied unless a permission allows it, and a
request is allowed only if every feature it touches is allowed::

    fraud_model_reads = Permission(
        name="fraud_model_reads",
        principals=["fraud-model"],
        actions=[Action.READ_ONLINE],
        resources=[fraud_model_v1],              # a FeatureService object
    )
    stats_pipeline = Permission(
        name="stats_pipeline",
        principals=["system:serviceaccount:pipelines:txn-stats"],
        actions=[Action.WRITE_ONLINE, Action.WRITE_OFFLINE],
        resources=[Resource.feature_view("user_transaction_stats")],
    )
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from quiver._definitions import FeatureService, FeatureView, check_name
from quiver.errors import DefinitionError


class Action(enum.IntEnum):
    """What a permission allows; numbers match `quiver.registry.v1.Action`."""

    DESCRIBE = 1
    """List and describe registry objects (RegistryService, Flight list_flights)."""
    READ_ONLINE = 2
    """Online lookups (GetOnlineFeatures)."""
    READ_OFFLINE = 3
    """Training sets over Flight (and uploading their spines)."""
    WRITE_ONLINE = 4
    """Pushes to the online store."""
    WRITE_OFFLINE = 5
    """Pushes to offline history."""
    DELETE = 6
    """Removing entities (DeleteEntities)."""

    @classmethod
    def parse(cls, value: Action | str | int) -> Action:
        """Accept an Action, its name in any case (``"read_online"``) or its number."""
        if isinstance(value, Action):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool) and value in cls._value2member_map_:
            return cls(value)
        allowed = ", ".join(cls.__members__)
        raise ValueError(f"{value!r} is not an action; allowed: {allowed}")


ALL_ACTIONS: tuple[Action, ...] = tuple(Action)
"""Every action: for administrators."""
READ_ACTIONS: tuple[Action, ...] = (Action.DESCRIBE, Action.READ_ONLINE, Action.READ_OFFLINE)
WRITE_ACTIONS: tuple[Action, ...] = (Action.WRITE_ONLINE, Action.WRITE_OFFLINE)


@dataclass(frozen=True)
class Resource:
    """What a permission covers. Build one with the class methods.

    - ``Resource.project()``: every object of the project (``name`` defaults to
      the repo's project at apply time).
    - ``Resource.feature_view(name)``: the view and all its features.
    - ``Resource.feature_service(name)``: the service and every feature it selects,
      however a request names them.
    - ``Resource.tag(key, value)``: views, services and features carrying the tag.

    FeatureView and FeatureService objects can be passed to `Permission` directly.
    """

    kind: str
    name: str = ""
    value: str = ""

    _KINDS = ("project", "feature_view", "feature_service", "tag")

    def __post_init__(self) -> None:
        if self.kind not in self._KINDS:
            raise DefinitionError(
                f"resource kind {self.kind!r} is unknown; allowed: {', '.join(self._KINDS)}"
            )
        if self.kind in ("feature_view", "feature_service"):
            check_name(self.kind.replace("_", " "), self.name)
        elif self.kind == "project" and self.name:
            check_name("project", self.name)
        elif self.kind == "tag" and (not isinstance(self.name, str) or not self.name
                                     or not isinstance(self.value, str)):
            raise DefinitionError(
                f"tag resource needs a non-empty key and a string value, got "
                f"{self.name!r}={self.value!r}"
            )

    @classmethod
    def project(cls, name: str = "") -> Resource:
        return cls("project", name)

    @classmethod
    def feature_view(cls, name: str) -> Resource:
        return cls("feature_view", name)

    @classmethod
    def feature_service(cls, name: str) -> Resource:
        return cls("feature_service", name)

    @classmethod
    def tag(cls, key: str, value: str) -> Resource:
        return cls("tag", key, value)

    def __str__(self) -> str:
        if self.kind == "tag":
            return f"tag {self.name}={self.value}"
        if self.kind == "project":
            return f"project {self.name}" if self.name else "project"
        return f"{self.kind.replace('_', ' ')} {self.name}"


class Permission:
    """Grants `actions` on `resources` to `principals` and members of `groups`.

    Args:
        name: Unique permission name.
        principals: Principal subjects (an OIDC token's subject claim, a static
            token's principal, a client certificate's common name); ``"*"``
            is any authenticated principal.
        groups: Group names (from the token's groups claim, a static token's
            groups, a client certificate's organizational units).
        actions: `Action` members or their names.
        resources: `Resource` selectors, FeatureView or FeatureService objects.
        description: Free text for people.
    """

    def __init__(
        self,
        *,
        name: str,
        actions: Sequence[Action | str],
        resources: Sequence[Resource | FeatureView | FeatureService],
        principals: Sequence[str] = (),
        groups: Sequence[str] = (),
        description: str = "",
    ) -> None:
        self.name = check_name("permission", name)
        where = f"permission {name!r}"
        for label, values in (("principals", principals), ("groups", groups)):
            if isinstance(values, str):
                raise DefinitionError(f"{where}: {label} must be a list of strings, not a string")
            for value in values:
                if not isinstance(value, str) or not value:
                    raise DefinitionError(f"{where}: {label} must be non-empty strings, got {value!r}")
        self.principals = tuple(dict.fromkeys(principals))
        self.groups = tuple(dict.fromkeys(groups))
        if not self.principals and not self.groups:
            raise DefinitionError(f"{where}: name at least one principal or group")
        if isinstance(actions, str) or not actions:
            raise DefinitionError(f"{where}: actions must list at least one Action")
        try:
            self.actions = tuple(dict.fromkeys(Action.parse(a) for a in actions))
        except ValueError as exc:
            raise DefinitionError(f"{where}: {exc}") from None
        if not resources:
            raise DefinitionError(f"{where}: resources must select at least one resource")
        selected: list[Resource] = []
        for item in resources:
            if isinstance(item, FeatureView):
                selected.append(Resource.feature_view(item.name))
            elif isinstance(item, FeatureService):
                selected.append(Resource.feature_service(item.name))
            elif isinstance(item, Resource):
                selected.append(item)
            else:
                raise DefinitionError(
                    f"{where}: resources must be Resource, FeatureView or FeatureService "
                    f"objects, got {item!r}"
                )
        self.resources = tuple(dict.fromkeys(selected))
        self.description = description

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Permission):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.name)

    def _key(self) -> tuple[object, ...]:
        return (self.name, self.principals, self.groups, self.actions, self.resources,
                self.description)

    def __repr__(self) -> str:
        return (f"Permission(name={self.name!r}, principals={list(self.principals)!r}, "
                f"groups={list(self.groups)!r}, actions={[a.name for a in self.actions]!r}, "
                f"resources={[str(r) for r in self.resources]!r})")
