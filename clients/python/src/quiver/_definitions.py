"""Feature definitions: entities, feature views, feature services.

Objects validate themselves on construction, so a mistake surfaces in the file
that made it, with the object and field named. Checks that need the whole
repository (unknown entities, name collisions across objects) live in
`quiver_server.repo`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from quiver.errors import DefinitionError
from quiver.transforms import Transform
from quiver.types import ValueType

if TYPE_CHECKING:
    from quiver._on_demand import OnDemandFeatureView

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME_LENGTH = 128


def check_name(kind: str, name: object) -> str:
    """Return `name` if it is a valid identifier for `kind`, else raise DefinitionError."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME_LENGTH:
        raise DefinitionError(
            f"{kind} name {name!r} is invalid: use letters, digits and underscores, "
            f"starting with a letter or underscore, at most {MAX_NAME_LENGTH} characters"
        )
    return name


def _check_tags(owner: str, tags: Mapping[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise DefinitionError(f"{owner}: tags must map strings to strings, got {key!r}: {value!r}")
    return dict(tags)


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature counts as drifted from its reference (`quiver monitor`).

    A threshold left as None is inherited: a feature's from its view, a view's
    from the defaults (psi 0.2, jensen_shannon 0.15, null_rate 0.05).

    Args:
        psi: Population stability index between the binned distributions
            (0.1 is a small shift, 0.2 a significant one).
        jensen_shannon: Jensen-Shannon distance, base 2, between 0 and 1.
        null_rate: Absolute change of the share of nulls (0.05 = 5 points).
    """

    psi: float | None = None
    jensen_shannon: float | None = None
    null_rate: float | None = None

    def __post_init__(self) -> None:
        limits = {"psi": math.inf, "jensen_shannon": 1.0, "null_rate": 1.0}
        for name, upper in limits.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                0 < value <= upper
            ):
                allowed = "a positive number" if upper == math.inf else f"a number in (0, {upper:g}]"
                raise DefinitionError(f"DriftThresholds.{name} must be {allowed}, got {value!r}")
            object.__setattr__(self, name, float(value))


@dataclass(frozen=True)
class Field:
    """A named, typed column: a join key or a feature.

    Args:
        name: Column name.
        dtype: Its type.
        description: Free text for people.
        tags: Free-form labels.
        drift: Drift thresholds of this feature, overriding its view's.
    """

    name: str
    dtype: ValueType
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    drift: DriftThresholds | None = None

    def __post_init__(self) -> None:
        check_name("field", self.name)
        try:
            object.__setattr__(self, "dtype", ValueType.parse(self.dtype))
        except ValueError as exc:
            raise DefinitionError(f"field {self.name!r}: {exc}") from None
        object.__setattr__(self, "tags", _check_tags(f"field {self.name!r}", self.tags))
        if self.drift is not None and not isinstance(self.drift, DriftThresholds):
            raise DefinitionError(
                f"field {self.name!r}: drift must be a DriftThresholds, got {self.drift!r}"
            )


@dataclass(frozen=True)
class Entity:
    """A business object (a user, a merchant) identified by one or more join keys.

    Args:
        name: Unique entity name.
        join_keys: The key columns, e.g. ``[Field("user_id", Int64)]``.
        description: Free text for people.
        owner: Who answers for it (an email or team).
        tags: Free-form labels.
    """

    name: str
    join_keys: tuple[Field, ...]
    description: str = ""
    owner: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("entity", self.name)
        keys = tuple(self.join_keys)
        if not keys:
            raise DefinitionError(f"entity {self.name!r}: join_keys must name at least one key")
        for key in keys:
            if not isinstance(key, Field):
                raise DefinitionError(
                    f"entity {self.name!r}: join_keys must be Field objects, got {key!r}"
                )
            if key.dtype not in _KEY_TYPES:
                allowed = ", ".join(t.name.lower() for t in _KEY_TYPES)
                raise DefinitionError(
                    f"entity {self.name!r}: join key {key.name!r} has type "
                    f"{key.dtype.name.lower()}; allowed: {allowed}"
                )
        _check_unique(f"entity {self.name!r} join keys", [k.name for k in keys])
        object.__setattr__(self, "join_keys", keys)
        object.__setattr__(self, "tags", _check_tags(f"entity {self.name!r}", self.tags))

    @property
    def join_key_names(self) -> list[str]:
        return [k.name for k in self.join_keys]


_KEY_TYPES = (ValueType.INT64, ValueType.INT32, ValueType.STRING, ValueType.BYTES)


@dataclass(frozen=True)
class ParquetSource:
    """Offline history of a feature view: Parquet files under `path`.

    Args:
        path: A file or directory (read recursively, hive partitions allowed),
            relative to the offline store root or an absolute path / URI.
        timestamp_field: Column with each row's event time. Naive timestamps are
            read as UTC.
        created_timestamp_field: Optional column with when the row was written;
            among rows with equal event times the latest created wins.
        field_mapping: Optional renames from source column to feature name.
    """

    path: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    field_mapping: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise DefinitionError(f"ParquetSource.path must be a non-empty string, got {self.path!r}")
        check_name("timestamp field", self.timestamp_field)
        if self.created_timestamp_field is not None:
            check_name("created timestamp field", self.created_timestamp_field)
            if self.created_timestamp_field == self.timestamp_field:
                raise DefinitionError(
                    f"ParquetSource {self.path!r}: created_timestamp_field must differ from "
                    f"timestamp_field ({self.timestamp_field!r})"
                )
        object.__setattr__(self, "field_mapping", dict(self.field_mapping))


@dataclass(frozen=True)
class FeatureProjection:
    """A selection of features from one view, e.g. ``user_stats[["txn_count_7d"]]``."""

    view: str
    features: tuple[str, ...]


class FeatureView:
    """A group of features of the same entities, read from one source.

    Args:
        name: Unique view name.
        entities: The entities whose join keys identify a row.
        schema: The features, e.g. ``[Field("txn_count_7d", Int64)]``.
        source: Where the history lives.
        ttl: How long a value stays valid after its event time, for training
            sets and online reads; ``timedelta(0)`` means forever.
        online: Whether the view is materialized into the online store.
        description: Free text for people.
        owner: Who answers for it.
        tags: Free-form labels.
        drift: Drift thresholds of its features (each `Field` may override them).
    """

    def __init__(
        self,
        *,
        name: str,
        entities: Sequence[Entity],
        schema: Sequence[Field],
        source: ParquetSource,
        ttl: timedelta = timedelta(0),
        online: bool = True,
        description: str = "",
        owner: str = "",
        tags: Mapping[str, str] | None = None,
        drift: DriftThresholds | None = None,
    ) -> None:
        self.name = check_name("feature view", name)
        where = f"feature view {name!r}"
        self.entities = tuple(entities)
        if not self.entities:
            raise DefinitionError(f"{where}: entities must name at least one entity")
        for entity in self.entities:
            if not isinstance(entity, Entity):
                raise DefinitionError(f"{where}: entities must be Entity objects, got {entity!r}")
        _check_unique(f"{where} entities", [e.name for e in self.entities])
        self.schema = tuple(schema)
        if not self.schema:
            raise DefinitionError(f"{where}: schema must declare at least one feature")
        for feature in self.schema:
            if not isinstance(feature, Field):
                raise DefinitionError(f"{where}: schema must hold Field objects, got {feature!r}")
        _check_unique(f"{where} features", [f.name for f in self.schema])
        if not isinstance(source, ParquetSource):
            raise DefinitionError(f"{where}: source must be a ParquetSource, got {source!r}")
        self.source = source
        if not isinstance(ttl, timedelta) or ttl < timedelta(0):
            raise DefinitionError(f"{where}: ttl must be a non-negative timedelta, got {ttl!r}")
        if ttl % timedelta(seconds=1):
            raise DefinitionError(f"{where}: ttl must be a whole number of seconds, got {ttl}")
        self.ttl = ttl
        self.online = bool(online)
        self.description = description
        self.owner = owner
        self.tags = _check_tags(where, tags or {})
        if drift is not None and not isinstance(drift, DriftThresholds):
            raise DefinitionError(f"{where}: drift must be a DriftThresholds, got {drift!r}")
        self.drift = drift

        key_names: list[str] = []
        for entity in self.entities:
            for key in entity.join_keys:
                if key.name in key_names:
                    raise DefinitionError(
                        f"{where}: join key {key.name!r} is declared by more than one entity"
                    )
                key_names.append(key.name)
        reserved = {*key_names, source.timestamp_field}
        if source.created_timestamp_field:
            reserved.add(source.created_timestamp_field)
        for feature in self.schema:
            if feature.name in reserved:
                raise DefinitionError(
                    f"{where}: feature {feature.name!r} collides with a join key or timestamp "
                    f"column; rename the feature"
                )

    @property
    def join_keys(self) -> list[Field]:
        return [key for entity in self.entities for key in entity.join_keys]

    @property
    def join_key_names(self) -> list[str]:
        return [key.name for key in self.join_keys]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.schema]

    @property
    def ttl_seconds(self) -> int:
        return int(self.ttl.total_seconds())

    def feature(self, name: str) -> Field:
        for feature in self.schema:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def __getitem__(self, features: Sequence[str]) -> FeatureProjection:
        """Select some features for a feature service: ``view[["a", "b"]]``."""
        return project("feature view", self.name, self.feature_names, features)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureView):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.name)

    def _key(self) -> tuple[object, ...]:
        return (
            self.name, self.entities, self.schema, self.source, self.ttl, self.online,
            self.description, self.owner, tuple(sorted(self.tags.items())), self.drift,
        )

    def __repr__(self) -> str:
        return f"FeatureView(name={self.name!r}, features={self.feature_names!r})"


class FeatureService:
    """A named set of features that one model consumes.

    Args:
        name: Unique service name.
        features: Whole views (on-demand ones too), projections (``view[["a"]]``)
            or references (``"view:feature"``).
        description: Free text for people.
        owner: Who answers for it.
        tags: Free-form labels.
        transforms: Model-dependent transforms of selected features, at most
            one per feature (`quiver.transforms`).
    """

    def __init__(
        self,
        *,
        name: str,
        features: Sequence[FeatureView | OnDemandFeatureView | FeatureProjection | str],
        description: str = "",
        owner: str = "",
        tags: Mapping[str, str] | None = None,
        transforms: Sequence[Transform] = (),
    ) -> None:
        from quiver._on_demand import OnDemandFeatureView  # defined on top of this module

        self.name = check_name("feature service", name)
        where = f"feature service {name!r}"
        merged: dict[str, list[str]] = {}
        whole: set[str] = set()
        for item in features:
            if isinstance(item, FeatureView | OnDemandFeatureView):
                merged.setdefault(item.name, [])
                whole.add(item.name)
            elif isinstance(item, FeatureProjection):
                merged.setdefault(item.view, []).extend(item.features)
            elif isinstance(item, str):
                try:
                    view, feature = parse_feature_ref(item)
                except ValueError as exc:
                    raise DefinitionError(f"{where}: {exc}") from None
                merged.setdefault(view, []).append(feature)
            else:
                raise DefinitionError(
                    f"{where}: features must be FeatureView, projection or 'view:feature', "
                    f"got {item!r}"
                )
        if not merged:
            raise DefinitionError(f"{where}: features must select at least one feature")
        self.projections = tuple(
            FeatureProjection(view, () if view in whole else tuple(dict.fromkeys(names)))
            for view, names in merged.items()
        )
        self.description = description
        self.owner = owner
        self.tags = _check_tags(where, tags or {})
        self.transforms = tuple(transforms)
        for transform in self.transforms:
            if not isinstance(transform, Transform):
                raise DefinitionError(
                    f"{where}: transforms must be quiver.transforms objects, got {transform!r}"
                )
        _check_unique(f"{where} transformed features", [t.feature for t in self.transforms])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureService):
            return NotImplemented
        return (
            self.name, self.projections, self.description, self.owner, self.tags, self.transforms
        ) == (
            other.name, other.projections, other.description, other.owner, other.tags,
            other.transforms,
        )

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"FeatureService(name={self.name!r}, projections={self.projections!r})"


def project(
    kind: str, view: str, known: Sequence[str], features: Sequence[str] | str
) -> FeatureProjection:
    """A projection of `view` (a `kind`) onto `features`, which must be among `known`."""
    if isinstance(features, str):
        features = [features]
    for name in features:
        if name not in known:
            raise DefinitionError(
                f"{kind} {view!r} has no feature {name!r}; it has: {', '.join(known)}"
            )
    return FeatureProjection(view, tuple(features))


def parse_feature_ref(ref: str) -> tuple[str, str]:
    """Split ``"view:feature"`` into its parts, or raise ValueError saying why not."""
    view, sep, feature = ref.partition(":")
    if not sep or not view or not feature or ":" in feature:
        raise ValueError(f"feature reference {ref!r} must look like 'feature_view:feature'")
    return view, feature


def _check_unique(what: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DefinitionError(f"{what}: {name!r} appears more than once")
        seen.add(name)
