"""Building pipelines for a server: functions, parameters, and fitting.

`Transformations` is what the serving and Flight servers (and `quiver fit`)
hold: it loads a selection's functions (checked against the applied source),
binds the service's transforms to a parameter set from the registry, and
fits new parameters from a training set's columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from quiver.errors import InvalidArgumentError
from quiver.registry.v1 import registry_pb2 as pb
from quiver.transforms import CUSTOM
from quiver_server.registry.convert_transforms import (
    function_hashes,
    params_from_proto,
    params_to_proto,
)
from quiver_server.registry.snapshot import Snapshot
from quiver_server.transforms import builtins, custom, params
from quiver_server.transforms.builtins import BoundTransform
from quiver_server.transforms.functions import FunctionLoader
from quiver_server.transforms.on_demand import OnDemandRunner
from quiver_server.transforms.pipeline import Pipeline
from quiver_server.transforms.selection import Selection


class Transformations:
    """Pipelines for the selections of one feature repo.

    Args:
        repo_path: The feature repo, where functions' modules are looked up first.
    """

    def __init__(self, repo_path: Path | str) -> None:
        self.loader = FunctionLoader(repo_path)

    def pipeline(
        self,
        snapshot: Snapshot,
        selection: Selection,
        *,
        version: int = 0,
        full_names: bool = False,
        field: str = "transform_version",
    ) -> Pipeline:
        """The pipeline of `selection`, its transforms bound to parameter set `version`.

        Args:
            snapshot: The registry version the selection was resolved in.
            selection: What is requested.
            version: Pinned parameter set version; 0 for the current one.
            full_names: Name columns "view__feature".
            field: The request field that carries `version`, for errors.

        Raises:
            InvalidArgumentError: a version pinned without a feature service.
            NotFoundError, FailedPreconditionError: see `params.parameter_set`;
                also FAILED_PRECONDITION when a function cannot be loaded or
                its deployed source differs from the applied one.
        """
        runners = self._runners(snapshot, selection)
        if selection.service is None:
            if version:
                raise InvalidArgumentError.for_field(
                    field, "only a feature service has transforms; select one or leave it 0"
                )
            return Pipeline(selection, runners, {}, 0, full_names)
        bound, used = self._bind(snapshot, selection, version)
        return Pipeline(selection, runners, bound, used, full_names)

    def fitting_pipeline(self, snapshot: Snapshot, selection: Selection) -> Pipeline:
        """A pipeline that computes the values the transforms read (`Pipeline.bases`)."""
        return Pipeline(selection, self._runners(snapshot, selection), None, 0, True)

    def fit(
        self, snapshot: Snapshot, selection: Selection, columns: Mapping[str, pa.ChunkedArray]
    ) -> list[pb.FittedTransform]:
        """Fit every transform that takes parameters from the training set.

        Args:
            snapshot: The registry version the selection was resolved in.
            selection: A feature service's selection.
            columns: Feature ref to the training set's column each transform reads.
        """
        assert selection.service is not None
        hashes = function_hashes(snapshot.proto)
        fitted = []
        for transform in selection.transforms:
            if not transform.needs_fit:
                continue
            values = columns[transform.feature]
            if transform.kind == CUSTOM:
                found = custom.fit(selection.service.name, transform, values, self.loader, hashes)
            else:
                found = builtins.fit(transform, values)
            fitted.append(pb.FittedTransform(
                feature=transform.feature, kind=transform.kind, parameters=params_to_proto(found)
            ))
        return fitted

    def _runners(self, snapshot: Snapshot, selection: Selection) -> dict[str, OnDemandRunner]:
        if not selection.on_demand:
            return {}
        hashes = function_hashes(snapshot.proto)
        return {
            view.name: OnDemandRunner(view, self.loader.load(
                view.function, hashes.get(view.function, ""), f"on-demand feature view {view.name!r}"
            ))
            for view in selection.on_demand
        }

    def _bind(
        self, snapshot: Snapshot, selection: Selection, version: int
    ) -> tuple[dict[str, BoundTransform], int]:
        service = selection.service
        assert service is not None
        found = params.parameter_set(snapshot.proto, service.name, version)
        if not selection.transforms:
            return {}, 0
        fitted = {t.feature: params_from_proto(t.parameters) for t in found.transforms} if found else {}
        hashes = function_hashes(snapshot.proto)
        bound: dict[str, BoundTransform] = {}
        for transform in selection.transforms:
            values = fitted.get(transform.feature, {})
            if transform.kind == CUSTOM:
                bound[transform.feature] = custom.bind(
                    service.name, transform, values, self.loader, hashes
                )
            else:
                bound[transform.feature] = builtins.bind(transform, values)
        return bound, found.version if found else 0
