"""Fitting a feature service's transforms on a training set.

The training set is built exactly as a pull would build it (point-in-time
join, then the on-demand views), over the whole spine; each transform that
takes parameters from the data is fitted on the column it reads, and the
parameters are appended to the registry as a new, immutable version. The
Flight server does this for ``TrainingSetCommand.fit`` and `quiver fit` calls
the same code in-process.
"""

from __future__ import annotations

from dataclasses import dataclass

from quiver.errors import InvalidArgumentError
from quiver.registry.v1 import registry_pb2 as pb
from quiver_flight.pit import PointInTimeEngine, group_by_view
from quiver_flight.spines import Spine
from quiver_flight.transformed import TrainingShape, base_columns
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore
from quiver_server.transforms import params
from quiver_server.transforms.engine import Transformations
from quiver_server.transforms.selection import select


@dataclass(frozen=True)
class FitRequest:
    """What to fit, on what, for whom.

    Attributes:
        feature_service: The service whose transforms are fitted.
        spine: The training set's spine.
        spine_name: How the origin records it, e.g. "spine_id:<id>".
        timestamp_column: The spine's event-time column.
        fitted_by: Who asked.
        fitted_via: "flight" or "cli".
        fingerprint: Digest of the spine's source files; the spine's own when "".
    """

    feature_service: str
    spine: Spine
    spine_name: str
    timestamp_column: str
    fitted_by: str
    fitted_via: str
    fingerprint: str = ""


def fit_service(
    request: FitRequest,
    snapshot: Snapshot,
    registry: RegistryStore,
    engine: PointInTimeEngine,
    transformations: Transformations,
) -> tuple[Snapshot, pb.TransformParameterSet]:
    """Fit the service's transforms on the spine's training set and record them.

    Returns:
        The registry version holding the new parameter set, and the set.

    Raises:
        InvalidArgumentError: the service has nothing to fit, or the spine does
            not fit it (a missing join key, timestamp or request column), or an
            on-demand function or custom fit failed.
        FailedPreconditionError: a view's history is missing, or the service's
            transforms changed while fitting.
    """
    selection = select(snapshot, feature_service=request.feature_service)
    if not any(t.needs_fit for t in selection.transforms):
        raise InvalidArgumentError.for_field(
            "fit", f"feature service {request.feature_service!r} has no transforms with fitted "
            f"parameters; request its training set without fit",
            reason="NOTHING_TO_FIT",
        )
    shape = TrainingShape(selection, transformations.fitting_pipeline(snapshot, selection), True)
    spine = request.spine
    shape.schema(spine.schema, request.timestamp_column)
    sources = engine.locate([view for view, _ in group_by_view(shape.join_refs)])
    joined = engine.join(
        spine.read(0, spine.num_rows), shape.join_refs, timestamp_column=request.timestamp_column,
        full_feature_names=True, sources=sources,
    )
    columns = base_columns(shape, joined, len(spine.schema))
    fitted = transformations.fit(snapshot, selection, columns)
    service = next(s for s in snapshot.proto.feature_services if s.name == request.feature_service)
    origin = pb.TrainingSetOrigin(
        spine=request.spine_name, spine_fingerprint=request.fingerprint or spine.fingerprint,
        rows=spine.num_rows,
        timestamp_column=request.timestamp_column, registry_version=snapshot.version,
    )
    return params.record(
        registry, request.feature_service, params.spec_hash(snapshot.proto, service), fitted,
        origin, request.fitted_by or "unknown", request.fitted_via,
    )
