"""What a request selects once on-demand views and transforms are in play.

A lookup or training set asks for stored features, on-demand features, or a
feature service mixing both (with transforms). `Selection` lists what must be
read from storage -- the requested stored features, then the stored inputs of
on-demand views that were not requested themselves -- and what must be sent
as request data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quiver import FeatureService, OnDemandFeatureView, ValueType
from quiver.errors import InvalidArgumentError
from quiver.transforms import Transform
from quiver_server.registry.snapshot import AnyRef, FeatureRef, OnDemandRef, Snapshot


@dataclass(frozen=True)
class Selection:
    """A resolved selection.

    Attributes:
        requested: The requested features, in output order.
        stored: Every stored feature to read: the requested ones first (in
            order), then on-demand inputs that were not requested.
        on_demand: The on-demand views to run, in first-use order.
        request_fields: Request data the on-demand views read, by field name.
        service: The feature service, when one was selected.
    """

    requested: tuple[AnyRef, ...]
    stored: tuple[FeatureRef, ...]
    on_demand: tuple[OnDemandFeatureView, ...]
    request_fields: dict[str, ValueType]
    service: FeatureService | None

    @property
    def transforms(self) -> tuple[Transform, ...]:
        return self.service.transforms if self.service is not None else ()

    @property
    def plain(self) -> bool:
        """Only stored features, untransformed: the fast path of both servers."""
        return not self.on_demand and not self.transforms

    def stored_index(self, ref: str) -> int:
        for i, stored in enumerate(self.stored):
            if stored.ref == ref:
                return i
        raise KeyError(ref)


def select(
    snapshot: Snapshot,
    features: Sequence[str] | None = None,
    feature_service: str | None = None,
    *,
    field: str = "features",
) -> Selection:
    """Resolve feature references (on-demand ones too) or a feature service.

    Raises:
        InvalidArgumentError: neither or both selections, a malformed ref, or
            on-demand views that disagree on a request field's type.
        NotFoundError: an unknown view, feature or service, named.
    """
    requested = snapshot.resolve_any(features, feature_service, field=field)
    service = snapshot.feature_service(feature_service) if feature_service else None
    stored = [ref for ref in requested if isinstance(ref, FeatureRef)]
    on_demand: dict[str, OnDemandFeatureView] = {}
    for ref in requested:
        if isinstance(ref, OnDemandRef):
            on_demand.setdefault(ref.view.name, ref.view)
    if not on_demand:
        return Selection(tuple(requested), tuple(stored), (), {}, service)
    known = {ref.ref for ref in stored}
    fields: dict[str, tuple[ValueType, str]] = {}
    for view in on_demand.values():
        inputs = [f"{p.view}:{name}" for p in view.feature_inputs for name in p.features]
        hidden = [ref for ref in dict.fromkeys(inputs) if ref not in known]
        if hidden:
            stored.extend(snapshot.resolve(features=hidden, field=field))
            known.update(hidden)
        for request_field in view.request_fields:
            dtype, owner = fields.setdefault(request_field.name, (request_field.dtype, view.name))
            if dtype != request_field.dtype:
                raise InvalidArgumentError.for_field(
                    field,
                    f"request field {request_field.name!r} is {dtype.name.lower()} in on-demand "
                    f"view {owner!r} and {request_field.dtype.name.lower()} in {view.name!r}; "
                    f"request them separately",
                )
    return Selection(
        tuple(requested), tuple(stored), tuple(on_demand.values()),
        {name: dtype for name, (dtype, _) in fields.items()}, service,
    )
