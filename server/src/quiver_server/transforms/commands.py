"""`quiver fit` and `quiver transforms list|show`.

    quiver [--repo DIR] fit SERVICE --spine PATH [--timestamp-column COL]
    quiver [--repo DIR] transforms list
    quiver [--repo DIR] transforms show SERVICE [--version N]
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Iterator, Mapping
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from quiver.errors import NotFoundError
from quiver.registry.v1 import registry_pb2 as pb
from quiver.types.v1 import value_pb2
from quiver_server.config import QuiverConfig
from quiver_server.registry.convert_transforms import params_from_proto
from quiver_server.registry.store import RegistryStore
from quiver_server.transforms import params

if TYPE_CHECKING:
    from quiver_flight.spines import Spine

_SHOWN_VALUES = 12


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the commands to the `quiver` parser."""
    p = sub.add_parser(
        "fit", help="fit a feature service's transforms on a training set (new parameter version)"
    )
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--spine", required=True,
                   help="Parquet file or directory of labelled events (join keys, timestamp, "
                        "request fields)")
    p.add_argument("--timestamp-column", default="event_timestamp")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("transforms", help="list or show transforms and fitted parameters")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("service", nargs="?", metavar="SERVICE", help="feature service for show")
    p.add_argument("--version", type=int, default=0, help="parameter version (default: current)")
    p.set_defaults(func=cmd_transforms)


def cmd_fit(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_flight.engines.factory import training_engine
    from quiver_flight.fitting import FitRequest, fit_service
    from quiver_server.governance.erasure import PendingErasures
    from quiver_server.governance.paths import GovernancePaths
    from quiver_server.offline.source import list_files
    from quiver_server.transforms.engine import Transformations

    store = RegistryStore(config.registry_path)
    snapshot = store.latest()
    path = Path(args.spine).resolve()
    listing = list_files(str(path))
    if listing is None:
        raise SystemExit(f"quiver: error: no Parquet spine at {args.spine}")
    spine = _open_spine(config, path)
    request = FitRequest(
        args.service, spine, f"file:{path}", args.timestamp_column, _user(), "cli",
        fingerprint=listing.fingerprint,
    )
    engine = training_engine(config, cache_bytes=config.flight.history_cache_bytes,
                             exclusions=PendingErasures(GovernancePaths.of(config)))
    fitted, parameter_set = fit_service(
        request, snapshot, store, engine, Transformations(config.repo_path)
    )
    print(f"Fitted feature service {args.service!r} on {spine.num_rows:,} rows of {path}: "
          f"parameter version {parameter_set.version} (registry version {fitted.version}).")
    for line in _parameter_lines(parameter_set):
        print(line)
    return 0


def _open_spine(config: QuiverConfig, path: Path) -> Spine:
    """The local Parquet file or directory, stored as an uploaded spine (it expires)."""
    import pyarrow.dataset as ds

    from quiver_flight.spines import SpineStore

    dataset = ds.dataset(str(path), format="parquet")
    return SpineStore(config.offline_root, config.flight).put(dataset.schema, dataset.to_batches())


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def cmd_transforms(config: QuiverConfig, args: argparse.Namespace) -> int:
    proto = RegistryStore(config.registry_path).latest().proto
    if args.action == "list":
        for line in _list_lines(proto):
            print(line)
        return 0
    if not args.service:
        raise SystemExit("quiver: error: transforms show needs a SERVICE")
    service = next((s for s in proto.feature_services if s.name == args.service), None)
    if service is None:
        raise NotFoundError(f"feature service {args.service!r} does not exist")
    print(f"feature service {service.name}")
    for transform in service.transforms:
        print(f"  {transform.kind:<16} {transform.feature}{_options(transform)}")
    found = params.parameter_set(proto, service.name, args.version)
    if found is None:
        print("  (no fitted parameters: nothing in this service is fitted)")
        return 0
    current = params.current_version(proto, service)
    print(f"parameter version {found.version}{' (current)' if found.version == current else ''}")
    for line in _parameter_lines(found):
        print(line)
    return 0


def _list_lines(proto: pb.Registry) -> Iterator[str]:
    for view in sorted(proto.on_demand_feature_views, key=lambda v: v.name):
        inputs = [f.name for s in view.request_sources for f in s.schema]
        inputs += [f"{i.feature_view}:{f}" for i in view.feature_inputs for f in i.features]
        yield (f"on-demand view {view.name}: {', '.join(f.name for f in view.features)} = "
               f"{view.function}({', '.join(inputs)}) [{view.function_hash[:19]}]")
    for service in sorted(proto.feature_services, key=lambda s: s.name):
        if not service.transforms:
            continue
        sets = params.parameter_sets(proto, service.name)
        current = params.current_version(proto, service)
        state = (f"current parameter version {current} of {len(sets)}" if current
                 else "no fitting needed" if not params.needs_fit(service)
                 else f"not fitted for its current definition ({len(sets)} older versions)")
        yield f"feature service {service.name}: {len(service.transforms)} transforms, {state}"
        for transform in service.transforms:
            yield f"  {transform.kind:<16} {transform.feature}{_options(transform)}"


def _options(transform: pb.Transform) -> str:
    if transform.HasField("custom"):
        return f"  (custom: {transform.custom.function} [{transform.custom.function_hash[:19]}])"
    shown = _described(transform.options)
    return f"  {shown}" if shown else ""


def _described(values: Mapping[str, value_pb2.Values]) -> dict[str, list[object]]:
    return {name: array.to_pylist() for name, array in params_from_proto(values).items()}


def _parameter_lines(found: pb.TransformParameterSet) -> Iterator[str]:
    origin = found.training_set
    when = found.fitted_at.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")
    yield (f"  fitted {when} by {found.fitted_by or 'unknown'} via {found.fitted_via} on "
           f"{origin.rows:,} rows of {origin.spine} (registry version {origin.registry_version})")
    for transform in found.transforms:
        shown = []
        for name, values in sorted(_described(transform.parameters).items()):
            more = f", ... {len(values) - _SHOWN_VALUES} more" if len(values) > _SHOWN_VALUES else ""
            text = ", ".join(repr(v) for v in values[:_SHOWN_VALUES])
            shown.append(f"{name}={text}{more}" if len(values) == 1 else f"{name}=[{text}{more}]")
        yield f"  {transform.kind:<16} {transform.feature}: {'; '.join(shown)}"
