"""Fitted parameter sets in the registry: which one applies, and recording new ones.

Each fit of a feature service's transforms appends an immutable
`TransformParameterSet` numbered 1, 2, ... per service. A set carries the
digest of the transform definitions it was fitted for (`spec_hash`); it applies
only while the service's transforms -- and the source of the on-demand
functions whose output they read -- still hash the same, so a changed
definition can never run with parameters fitted for the old one. The current
version is the newest set matching the service's current definition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

from quiver.errors import FailedPreconditionError, NotFoundError
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore


def spec_hash(proto: pb.Registry, service: pb.FeatureService) -> str:
    """Digest of a service's transform definitions and the on-demand code they read."""
    digest = hashlib.sha256()
    functions = {v.name: v.function_hash for v in proto.on_demand_feature_views}
    for transform in service.transforms:
        digest.update(transform.SerializeToString(deterministic=True))
        view = transform.feature.partition(":")[0]
        digest.update(f"\0{functions.get(view, '')}\n".encode())
    return "sha256:" + digest.hexdigest()


def needs_fit(service: pb.FeatureService) -> bool:
    """Whether any of the service's transforms takes parameters from a training set."""
    from quiver_server.registry.convert_transforms import transform_from_proto

    return any(transform_from_proto(t).needs_fit for t in service.transforms)


def parameter_sets(proto: pb.Registry, service: str) -> list[pb.TransformParameterSet]:
    """Every set fitted for `service`, oldest first."""
    return [p for p in proto.transform_parameters if p.feature_service == service]


def current_version(proto: pb.Registry, service: pb.FeatureService) -> int:
    """The version lookups apply now; 0 when nothing fitted matches (or is needed)."""
    if not needs_fit(service):
        return 0
    wanted = spec_hash(proto, service)
    matching = [p.version for p in parameter_sets(proto, service.name) if p.spec_hash == wanted]
    return max(matching, default=0)


def _service(proto: pb.Registry, name: str) -> pb.FeatureService:
    for service in proto.feature_services:
        if service.name == name:
            return service
    raise NotFoundError(
        f"feature service {name!r} does not exist in project {proto.project.name!r}",
        reason="FEATURE_SERVICE_NOT_FOUND", metadata={"feature_service": name},
    )


def parameter_set(
    proto: pb.Registry, service_name: str, version: int = 0
) -> pb.TransformParameterSet | None:
    """The set a lookup or training set of `service_name` applies.

    Args:
        proto: The registry version served.
        service_name: The feature service.
        version: A pinned version, or 0 for the current one.

    Returns:
        The set, or None when the service has no fitted transforms.

    Raises:
        NotFoundError: an unknown service or version.
        FailedPreconditionError: the current definition was never fitted, or the
            pinned version was fitted for a different definition.
    """
    service = _service(proto, service_name)
    if not needs_fit(service):
        if version:
            _pinned(proto, service_name, version)  # an unknown version is still NOT_FOUND
        return None
    wanted = spec_hash(proto, service)
    if version:
        found = _pinned(proto, service_name, version)
        if found.spec_hash != wanted:
            raise FailedPreconditionError(
                f"transform parameter version {version} of feature service {service_name!r} was "
                f"fitted for an earlier definition of its transforms; use a version fitted since "
                f"(quiver transforms show {service_name}) or fit again",
                reason="TRANSFORM_VERSION_STALE",
                metadata={"feature_service": service_name, "transform_version": str(version)},
            )
        return found
    current = current_version(proto, service)
    if current == 0:
        raise FailedPreconditionError(
            f"feature service {service_name!r} has transforms whose parameters were never fitted "
            f"for its current definition; fit them on a training set with `quiver fit "
            f"{service_name} --spine PATH` or TrainingClient.get_training_set(..., fit=True)",
            reason="TRANSFORMS_NOT_FITTED", metadata={"feature_service": service_name},
        )
    return _pinned(proto, service_name, current)


def _pinned(proto: pb.Registry, service: str, version: int) -> pb.TransformParameterSet:
    for candidate in parameter_sets(proto, service):
        if candidate.version == version:
            return candidate
    raise NotFoundError(
        f"feature service {service!r} has no transform parameter version {version}",
        reason="TRANSFORM_VERSION_NOT_FOUND",
        metadata={"feature_service": service, "transform_version": str(version)},
    )


def record(
    store: RegistryStore,
    service_name: str,
    fitted_for: str,
    transforms: Sequence[pb.FittedTransform],
    origin: pb.TrainingSetOrigin,
    fitted_by: str,
    fitted_via: str,
) -> tuple[Snapshot, pb.TransformParameterSet]:
    """Append a new parameter set for `service_name` as a new registry version.

    Raises:
        FailedPreconditionError: the service's transforms changed (or the service
            went away) while it was being fitted.
    """
    recorded: dict[str, pb.TransformParameterSet] = {}

    def change(proto: pb.Registry) -> str:
        service = _service(proto, service_name)
        if spec_hash(proto, service) != fitted_for:
            raise FailedPreconditionError(
                f"the transforms of feature service {service_name!r} changed while they were "
                f"being fitted; fit again", reason="TRANSFORMS_CHANGED",
            )
        version = 1 + max((p.version for p in parameter_sets(proto, service_name)), default=0)
        entry = proto.transform_parameters.add(
            feature_service=service_name, version=version, spec_hash=fitted_for,
            transforms=transforms, training_set=origin, fitted_by=fitted_by, fitted_via=fitted_via,
        )
        entry.fitted_at.FromDatetime(datetime.now(UTC))
        recorded["set"] = entry
        return "fit"

    snapshot = store.commit(change)
    assert snapshot is not None
    return snapshot, recorded["set"]
