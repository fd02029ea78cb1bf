"""Conversion between SDK definitions and `quiver.registry.v1` messages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from quiver import (
    Action,
    DriftThresholds,
    Entity,
    FeatureProjection,
    FeatureService,
    FeatureView,
    Field,
    ParquetSource,
    Permission,
    Resource,
)
from quiver.errors import DefinitionError
from quiver.registry.v1 import registry_pb2 as pb
from quiver.types import ValueType


def drift_to_proto(d: DriftThresholds | None) -> pb.DriftThresholds | None:
    """None (nothing set) stays unset in the message, so definitions without
    thresholds compare equal to those stored before thresholds existed."""
    if d is None:
        return None
    return pb.DriftThresholds(
        psi=d.psi or 0.0, jensen_shannon=d.jensen_shannon or 0.0, null_rate=d.null_rate or 0.0
    )


def drift_from_proto(p: pb.DriftThresholds) -> DriftThresholds:
    return DriftThresholds(p.psi or None, p.jensen_shannon or None, p.null_rate or None)


def field_to_proto(f: Field) -> pb.Field:
    return pb.Field(
        name=f.name, value_type=int(f.dtype), description=f.description, tags=dict(f.tags),  # type: ignore[arg-type]
        drift=drift_to_proto(f.drift),
    )


def field_from_proto(p: pb.Field) -> Field:
    drift = drift_from_proto(p.drift) if p.HasField("drift") else None
    return Field(p.name, ValueType(p.value_type), p.description, dict(p.tags), drift)


def entity_to_proto(e: Entity) -> pb.Entity:
    return pb.Entity(
        name=e.name,
        join_keys=[field_to_proto(k) for k in e.join_keys],
        description=e.description,
        owner=e.owner,
        tags=dict(e.tags),
    )


def entity_from_proto(p: pb.Entity) -> Entity:
    return Entity(
        p.name,
        tuple(field_from_proto(k) for k in p.join_keys),
        p.description,
        p.owner,
        dict(p.tags),
    )


def view_to_proto(v: FeatureView) -> pb.FeatureView:
    return pb.FeatureView(
        name=v.name,
        entities=[e.name for e in v.entities],
        features=[field_to_proto(f) for f in v.schema],
        source=pb.ParquetSource(
            path=v.source.path,
            timestamp_field=v.source.timestamp_field,
            created_timestamp_field=v.source.created_timestamp_field or "",
            field_mapping=dict(v.source.field_mapping),
        ),
        ttl_seconds=v.ttl_seconds,
        online=v.online,
        description=v.description,
        owner=v.owner,
        tags=dict(v.tags),
        drift=drift_to_proto(v.drift),
    )


def view_from_proto(p: pb.FeatureView, entities: Mapping[str, Entity]) -> FeatureView:
    missing = [name for name in p.entities if name not in entities]
    if missing:
        raise DefinitionError(f"feature view {p.name!r} uses unknown entities {missing}")
    return FeatureView(
        name=p.name,
        entities=[entities[name] for name in p.entities],
        schema=[field_from_proto(f) for f in p.features],
        source=ParquetSource(
            path=p.source.path,
            timestamp_field=p.source.timestamp_field,
            created_timestamp_field=p.source.created_timestamp_field or None,
            field_mapping=dict(p.source.field_mapping),
        ),
        ttl=timedelta(seconds=p.ttl_seconds),
        online=p.online,
        description=p.description,
        owner=p.owner,
        tags=dict(p.tags),
        drift=drift_from_proto(p.drift) if p.HasField("drift") else None,
    )


def service_to_proto(s: FeatureService, hashes: Mapping[str, str] | None = None) -> pb.FeatureService:
    """`hashes` maps custom transforms' import paths to their source hashes."""
    from quiver_server.registry.convert_transforms import (
        transform_to_proto,  # builds on this module
    )

    return pb.FeatureService(
        name=s.name,
        projections=[
            pb.FeatureProjection(feature_view=p.view, features=list(p.features))
            for p in s.projections
        ],
        description=s.description,
        owner=s.owner,
        tags=dict(s.tags),
        transforms=[transform_to_proto(t, hashes or {}) for t in s.transforms],
    )


def service_from_proto(p: pb.FeatureService) -> FeatureService:
    from quiver_server.registry.convert_transforms import transform_from_proto

    return FeatureService(
        name=p.name,
        features=[
            FeatureProjection(proj.feature_view, tuple(proj.features)) for proj in p.projections
        ],
        description=p.description,
        owner=p.owner,
        tags=dict(p.tags),
        transforms=[transform_from_proto(t) for t in p.transforms],
    )


def resource_to_proto(r: Resource, project: str) -> pb.Resource:
    """A resource selector; a project resource without a name means `project`."""
    if r.kind == "project":
        return pb.Resource(project=r.name or project)
    if r.kind == "feature_view":
        return pb.Resource(feature_view=r.name)
    if r.kind == "feature_service":
        return pb.Resource(feature_service=r.name)
    return pb.Resource(tag=pb.TagSelector(key=r.name, value=r.value))


def resource_from_proto(p: pb.Resource) -> Resource:
    kind = p.WhichOneof("selector")
    if kind == "tag":
        return Resource.tag(p.tag.key, p.tag.value)
    if kind is None:
        raise DefinitionError("a stored permission resource selects nothing")
    return Resource(kind, getattr(p, kind))


def permission_to_proto(p: Permission, project: str) -> pb.Permission:
    return pb.Permission(
        name=p.name,
        principals=list(p.principals),
        groups=list(p.groups),
        actions=[int(a) for a in p.actions],  # type: ignore[misc]
        resources=[resource_to_proto(r, project) for r in p.resources],
        description=p.description,
    )


def permission_from_proto(p: pb.Permission) -> Permission:
    return Permission(
        name=p.name,
        principals=list(p.principals),
        groups=list(p.groups),
        actions=[Action(a) for a in p.actions],
        resources=[resource_from_proto(r) for r in p.resources],
        description=p.description,
    )
