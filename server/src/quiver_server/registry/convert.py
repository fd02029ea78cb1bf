"""Conversion between SDK definitions and `quiver.registry.v1` messages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from quiver import (
    DriftThresholds,
    Entity,
    FeatureProjection,
    FeatureService,
    FeatureView,
    Field,
    ParquetSource,
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


def service_to_proto(s: FeatureService) -> pb.FeatureService:
    return pb.FeatureService(
        name=s.name,
        projections=[
            pb.FeatureProjection(feature_view=p.view, features=list(p.features))
            for p in s.projections
        ],
        description=s.description,
        owner=s.owner,
        tags=dict(s.tags),
    )


def service_from_proto(p: pb.FeatureService) -> FeatureService:
    return FeatureService(
        name=p.name,
        features=[
            FeatureProjection(proj.feature_view, tuple(proj.features)) for proj in p.projections
        ],
        description=p.description,
        owner=p.owner,
        tags=dict(p.tags),
    )
