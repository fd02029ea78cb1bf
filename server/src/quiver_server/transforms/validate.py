"""Apply-time checks of on-demand views and transforms, and their function hashes.

`quiver plan` and `quiver apply` call `validate` after the rest of the repo
checks out. Every function named by import path is imported from the repo
(or installed packages) and its source hashed, so the registry records
exactly which code a definition means.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path

from quiver import FeatureService, FeatureView, OnDemandFeatureView, ValueType
from quiver.errors import DefinitionError
from quiver.transforms import CUSTOM
from quiver_server.transforms.builtins import input_types
from quiver_server.transforms.functions import FunctionLoader

Origin = Callable[[str, str], str]


def validate(
    repo_path: Path,
    feature_views: Mapping[str, FeatureView],
    on_demand_views: Mapping[str, OnDemandFeatureView],
    feature_services: Mapping[str, FeatureService],
    origin: Origin,
) -> dict[str, str]:
    """Check on-demand views and service transforms; return import path -> source hash.

    Args:
        repo_path: The feature repo (functions' modules are looked up there first).
        feature_views: Stored views by name.
        on_demand_views: On-demand views by name.
        feature_services: Services by name.
        origin: ``origin(kind, name)`` is the file that defined an object.

    Raises:
        DefinitionError: naming the file, the object and the problem.
    """
    loader = FunctionLoader(repo_path)
    hashes: dict[str, str] = {}

    def resolve(path: str, what: str) -> None:
        if path not in hashes:
            hashes[path] = loader.resolve(path, what)[1]

    for view in on_demand_views.values():
        where = f"{origin('on_demand_feature_view', view.name)}: on-demand feature view {view.name!r}"
        if view.name in feature_views:
            raise DefinitionError(
                f"{where}: a feature view is called {view.name!r} too; names are shared"
            )
        for projection in view.feature_inputs:
            source = feature_views.get(projection.view)
            if source is None:
                raise DefinitionError(
                    f"{where} reads from feature view {projection.view!r}, which the repo does "
                    f"not define" + (" (on-demand views cannot read on-demand views)"
                                     if projection.view in on_demand_views else "")
                )
            for name in projection.features:
                if name not in source.feature_names:
                    raise DefinitionError(
                        f"{where} reads {projection.view}:{name}, but view {projection.view!r} "
                        f"has no feature {name!r}"
                    )
        resolve(view.function, where)
        if view.mode == "pandas" and importlib.util.find_spec("pandas") is None:
            raise DefinitionError(
                f"{where}: mode 'pandas' needs pandas; install quiver-feature-store[pandas]"
            )
    for service in feature_services.values():
        where = f"{origin('feature_service', service.name)}: feature service {service.name!r}"
        selected = _selected_types(service, feature_views, on_demand_views)
        for transform in service.transforms:
            dtype = selected.get(transform.feature)
            if dtype is None:
                raise DefinitionError(
                    f"{where}: transform {transform.kind} reads {transform.feature!r}, which the "
                    f"service does not select"
                )
            allowed = input_types(transform.kind)
            if allowed is not None and dtype not in allowed:
                names = ", ".join(t.name.lower() for t in allowed)
                raise DefinitionError(
                    f"{where}: {transform.kind} cannot read {transform.feature!r} of type "
                    f"{dtype.name.lower()}; it reads: {names}"
                )
            if transform.kind == CUSTOM and transform.custom is not None:
                what = f"{where}: custom transform of {transform.feature!r}"
                resolve(transform.custom.function, what)
                if transform.custom.fit:
                    resolve(transform.custom.fit, what)
    return hashes


def _selected_types(
    service: FeatureService,
    feature_views: Mapping[str, FeatureView],
    on_demand_views: Mapping[str, OnDemandFeatureView],
) -> dict[str, ValueType]:
    """Feature ref -> type of every feature the service selects (checked to exist before)."""
    types: dict[str, ValueType] = {}
    for projection in service.projections:
        view = feature_views.get(projection.view) or on_demand_views[projection.view]
        for name in projection.features or view.feature_names:
            types[f"{projection.view}:{name}"] = view.feature(name).dtype
    return types
