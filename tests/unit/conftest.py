"""Unit-test fixtures: a registry built straight from SDK objects."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from quiver import Entity, FeatureService, FeatureView
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.config import QuiverConfig
from quiver_server.registry import convert
from quiver_server.registry.layout import assign_bins
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore

MakeRegistry = Callable[..., Snapshot]


def make_registry(
    config: QuiverConfig,
    entities: Sequence[Entity],
    views: Sequence[FeatureView],
    services: Sequence[FeatureService] = (),
) -> Snapshot:
    """Store a registry version holding exactly these objects, like `quiver apply`.

    Storage names come from the same assignment `quiver apply` makes, so
    calling it again models a re-apply.
    """

    def change(proto: pb.Registry) -> str:
        old_views = {v.name: v for v in proto.feature_views}
        proto.project.name = config.project
        del proto.entities[:]
        del proto.feature_views[:]
        del proto.feature_services[:]
        proto.entities.extend(convert.entity_to_proto(e) for e in entities)
        proto.feature_views.extend(convert.view_to_proto(v) for v in views)
        proto.feature_services.extend(convert.service_to_proto(s) for s in services)
        for view in views:
            assign_bins(proto.view_meta[view.name].layout, view, old_views.get(view.name))
        return "apply"

    snapshot = RegistryStore(config.registry_path).commit(change)
    assert snapshot is not None
    return snapshot


@pytest.fixture(name="make_registry")
def make_registry_fixture() -> MakeRegistry:
    """`make_registry(config, entities, views, services=())` for tests to call."""
    return make_registry
