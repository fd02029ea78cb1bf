"""One registry version, decoded into SDK objects, and feature resolution."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from quiver import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeatureView,
    Permission,
    parse_feature_ref,
)
from quiver.errors import InvalidArgumentError, NotFoundError
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.echo import clip, name_list
from quiver_server.registry import convert, convert_transforms
from quiver_server.registry.layout import ViewTable


class _Named:
    """Names of a resolved feature, from its view's name and its own."""

    view: FeatureView | OnDemandFeatureView
    feature: Field

    @property
    def ref(self) -> str:
        return f"{self.view.name}:{self.feature.name}"

    def output_name(self, full: bool) -> str:
        return f"{self.view.name}__{self.feature.name}" if full else self.feature.name


@dataclass(frozen=True)
class FeatureRef(_Named):
    """One resolved feature: its view and field."""

    view: FeatureView
    feature: Field


@dataclass(frozen=True)
class OnDemandRef(_Named):
    """One feature of an on-demand view: computed at request time, not stored."""

    view: OnDemandFeatureView
    feature: Field


AnyRef = FeatureRef | OnDemandRef
R = TypeVar("R", FeatureRef, AnyRef)


class Snapshot:
    """An immutable registry version with its objects decoded."""

    def __init__(self, proto: pb.Registry) -> None:
        self.proto = proto
        self.version = proto.version
        self.project = proto.project.name
        self.entities: dict[str, Entity] = {
            e.name: convert.entity_from_proto(e) for e in proto.entities
        }
        self.feature_views: dict[str, FeatureView] = {
            v.name: convert.view_from_proto(v, self.entities) for v in proto.feature_views
        }
        self.feature_services: dict[str, FeatureService] = {
            s.name: convert.service_from_proto(s) for s in proto.feature_services
        }
        self.permissions: list[Permission] = [
            convert.permission_from_proto(p) for p in proto.permissions
        ]
        self.on_demand_views: dict[str, OnDemandFeatureView] = {
            v.name: convert_transforms.on_demand_view_from_proto(v)
            for v in proto.on_demand_feature_views
        }
        self._tables = {
            name: ViewTable(self.project, view, dict(proto.view_meta[name].layout.bin_names))
            for name, view in self.feature_views.items()
        }

    @classmethod
    def empty(cls, project: str) -> Snapshot:
        return cls(pb.Registry(version=0, project=pb.Project(name=project)))

    def feature_view(self, name: str) -> FeatureView:
        try:
            return self.feature_views[name]
        except KeyError:
            raise NotFoundError(
                f"feature view {clip(name)!r} does not exist in project {self.project!r}",
                reason="FEATURE_VIEW_NOT_FOUND",
                metadata={"feature_view": clip(name)},
            ) from None

    def feature_service(self, name: str) -> FeatureService:
        try:
            return self.feature_services[name]
        except KeyError:
            raise NotFoundError(
                f"feature service {clip(name)!r} does not exist in project {self.project!r}",
                reason="FEATURE_SERVICE_NOT_FOUND",
                metadata={"feature_service": clip(name)},
            ) from None

    def view_table(self, name: str) -> ViewTable:
        self.feature_view(name)
        return self._tables[name]

    def watermark(self, view: str) -> datetime | None:
        meta = self.proto.view_meta.get(view)
        if meta is None or not meta.materialization.HasField("watermark"):
            return None
        return meta.materialization.watermark.ToDatetime(tzinfo=UTC)

    def resolve(
        self,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        *,
        field: str = "features",
    ) -> list[FeatureRef]:
        """Resolve feature references or a feature service, keeping their order.

        Only stored features: an on-demand view's name is NOT_FOUND here (see
        `resolve_any`).

        Raises:
            InvalidArgumentError: neither or both selections, or a malformed ref.
            NotFoundError: an unknown view, feature or service, named.
        """
        return self._resolve(features, feature_service, field, self._stored_ref)

    def resolve_any(
        self,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        *,
        field: str = "features",
    ) -> list[AnyRef]:
        """Like `resolve`, with on-demand views' features as `OnDemandRef`."""
        return self._resolve(features, feature_service, field, self._any_ref)

    def _resolve(
        self,
        features: Sequence[str] | None,
        feature_service: str | None,
        field: str,
        lookup: Callable[[str, str | None], list[R]],
    ) -> list[R]:
        if feature_service and features:
            raise InvalidArgumentError.for_field(
                field, "give either feature references or a feature service, not both"
            )
        if feature_service:
            service = self.feature_service(feature_service)
            refs: list[R] = []
            for projection in service.projections:
                for name in projection.features or (None,):
                    refs.extend(lookup(projection.view, name))
            return refs
        if not features:
            raise InvalidArgumentError.for_field(
                field, "select at least one feature ('view:feature') or a feature service"
            )
        # Every reference is checked for form before any is looked up, so whether a
        # request is malformed never depends on which of its names exist.
        parsed: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, ref in enumerate(features):
            try:
                parsed.append(parse_feature_ref(ref))
            except ValueError:
                raise InvalidArgumentError.for_field(
                    f"{field}[{i}]",
                    f"feature reference {clip(ref)!r} must look like 'feature_view:feature'",
                ) from None
            if ref in seen:
                raise InvalidArgumentError.for_field(
                    f"{field}[{i}]", f"feature {clip(ref)!r} is requested more than once"
                )
            seen.add(ref)
        resolved: list[R] = []
        for view_name, feature_name in parsed:
            resolved.extend(lookup(view_name, feature_name))
        return resolved

    def _stored_ref(self, view_name: str, name: str | None) -> list[FeatureRef]:
        """`view_name:name`, or every feature of the view when `name` is None."""
        view = self.feature_view(view_name)
        return [self._ref(view, n) for n in ([name] if name else view.feature_names)]

    def _any_ref(self, view_name: str, name: str | None) -> list[AnyRef]:
        on_demand = self.on_demand_views.get(view_name)
        if on_demand is None:
            return list(self._stored_ref(view_name, name))
        if name is None:
            return [OnDemandRef(on_demand, f) for f in on_demand.schema]
        try:
            return [OnDemandRef(on_demand, on_demand.feature(name))]
        except KeyError:
            raise NotFoundError(
                f"on-demand feature view {view_name!r} has no feature {clip(name)!r}; "
                f"it has: {name_list(on_demand.feature_names)}",
                reason="FEATURE_NOT_FOUND",
                metadata={"feature_view": view_name, "feature": clip(name)},
            ) from None

    def _ref(self, view: FeatureView, name: str) -> FeatureRef:
        try:
            return FeatureRef(view, view.feature(name))
        except KeyError:
            raise NotFoundError(
                f"feature view {view.name!r} has no feature {clip(name)!r}; "
                f"it has: {name_list(view.feature_names)}",
                reason="FEATURE_NOT_FOUND",
                metadata={"feature_view": view.name, "feature": clip(name)},
            ) from None
