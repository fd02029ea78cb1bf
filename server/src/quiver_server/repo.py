"""Feature repositories: load the definitions, validate them, plan and apply.

A feature repo is a directory with a `quiver.yaml` and Python files that define
`Entity`, `FeatureView`, `OnDemandFeatureView`, `FeatureService` and `Permission`
objects at module level. Files whose names start with `_` or `test_` are not
loaded. Applying stores a new registry version only if something changed; a
repo that does not validate is reported with the file and object at fault and
the stored registry is left untouched.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from google.protobuf.message import Message

from quiver import Action, Entity, FeatureService, FeatureView, OnDemandFeatureView, Permission
from quiver.errors import DefinitionError
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.config import QuiverConfig
from quiver_server.registry import convert, convert_transforms
from quiver_server.registry.layout import assign_bins
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore
from quiver_server.transforms.plan_notes import transform_notes
from quiver_server.transforms.validate import validate as validate_transforms

Kind = Literal["entity", "feature_view", "on_demand_feature_view", "feature_service", "permission"]


@dataclass
class RepoContents:
    """Every object a feature repo defines, with the file that defined it."""

    entities: dict[str, Entity] = field(default_factory=dict)
    feature_views: dict[str, FeatureView] = field(default_factory=dict)
    feature_services: dict[str, FeatureService] = field(default_factory=dict)
    on_demand_views: dict[str, OnDemandFeatureView] = field(default_factory=dict)
    permissions: dict[str, Permission] = field(default_factory=dict)
    origin: dict[tuple[Kind, str], str] = field(default_factory=dict)
    # Import path -> source hash of every function the definitions name.
    function_hashes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanItem:
    kind: Kind
    name: str
    action: Literal["add", "change", "remove"]
    detail: str = ""

    def __str__(self) -> str:
        mark = {"add": "+", "change": "~", "remove": "-"}[self.action]
        suffix = f" ({self.detail})" if self.detail else ""
        return f"  {mark} {self.kind} {self.name}{suffix}"


@dataclass
class Plan:
    project: str
    from_version: int
    items: list[PlanItem]

    @property
    def empty(self) -> bool:
        return not self.items

    def render(self) -> str:
        if self.empty:
            return f"Project {self.project!r}: no changes (registry version {self.from_version})."
        lines = [
            f"Project {self.project!r}: registry version {self.from_version} -> "
            f"{self.from_version + 1}"
        ]
        lines.extend(str(item) for item in self.items)
        counts = {a: sum(1 for i in self.items if i.action == a) for a in ("add", "change", "remove")}
        lines.append(
            f"{counts['add']} to add, {counts['change']} to change, {counts['remove']} to remove."
        )
        return "\n".join(lines)


def load_repo(repo_path: Path, project: str = "") -> RepoContents:
    """Import every definition file in `repo_path` and validate the whole repo.

    `project` is the repo's project name; permissions naming another one are refused.
    """
    contents = RepoContents()
    files = sorted(
        p for p in repo_path.glob("*.py") if not p.name.startswith(("_", "test_"))
    )
    if not files:
        raise DefinitionError(f"{repo_path}: no Python definition files found")
    for file in files:
        for obj in _import_definitions(file, repo_path):
            _add(contents, obj, file.name)
    _validate(contents)
    contents.function_hashes = validate_transforms(
        repo_path, contents.feature_views, contents.on_demand_views, contents.feature_services,
        lambda kind, name: contents.origin[(kind, name)],  # type: ignore[index]
    )
    _validate_permissions(contents, project)
    return contents


def _import_definitions(file: Path, repo_path: Path) -> list[object]:
    module_name = f"_quiver_repo_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Definition files may import each other, as in any Python package.
    sys.path.insert(0, str(repo_path))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except DefinitionError as exc:
        raise DefinitionError(f"{file.name}: {exc}") from None
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise DefinitionError(
            f"{file.name}: failed to load ({type(exc).__name__}: {exc}) at line {frame.lineno}"
        ) from None
    finally:
        sys.path.remove(str(repo_path))
        sys.modules.pop(module_name, None)
    return [
        value for name, value in vars(module).items()
        if not name.startswith("_")
        and isinstance(
            value, Entity | FeatureView | OnDemandFeatureView | FeatureService | Permission
        )
    ]


def _add(contents: RepoContents, obj: object, file: str) -> None:
    kind: Kind
    table: dict[str, object]
    if isinstance(obj, Entity):
        kind, table = "entity", contents.entities  # type: ignore[assignment]
    elif isinstance(obj, FeatureView):
        kind, table = "feature_view", contents.feature_views  # type: ignore[assignment]
    elif isinstance(obj, OnDemandFeatureView):
        kind, table = "on_demand_feature_view", contents.on_demand_views  # type: ignore[assignment]
    elif isinstance(obj, Permission):
        kind, table = "permission", contents.permissions  # type: ignore[assignment]
    else:
        assert isinstance(obj, FeatureService)
        kind, table = "feature_service", contents.feature_services  # type: ignore[assignment]
    name: str = obj.name
    existing = table.get(name)
    if existing is not None and existing != obj:
        raise DefinitionError(
            f"{file}: {kind} {name!r} is defined differently in "
            f"{contents.origin[(kind, name)]}; names must be unique"
        )
    if existing is None:
        table[name] = obj
        contents.origin[(kind, name)] = file


def _validate(contents: RepoContents) -> None:
    for view in contents.feature_views.values():
        where = f"{contents.origin[('feature_view', view.name)]}: feature view {view.name!r}"
        for entity in view.entities:
            known = contents.entities.get(entity.name)
            if known is None:
                raise DefinitionError(
                    f"{where} uses entity {entity.name!r}, which the repo does not define"
                )
            if known != entity:
                raise DefinitionError(
                    f"{where} uses a different definition of entity {entity.name!r} than "
                    f"{contents.origin[('entity', entity.name)]}"
                )
    for service in contents.feature_services.values():
        where = f"{contents.origin[('feature_service', service.name)]}: feature service {service.name!r}"
        outputs: dict[str, str] = {}
        for projection in service.projections:
            selected = (contents.feature_views.get(projection.view)
                        or contents.on_demand_views.get(projection.view))
            if selected is None:
                raise DefinitionError(
                    f"{where} selects from feature view {projection.view!r}, which the repo "
                    f"does not define"
                )
            for feature in projection.features or selected.feature_names:
                if feature not in selected.feature_names:
                    raise DefinitionError(
                        f"{where} selects {projection.view}:{feature}, but view "
                        f"{projection.view!r} has no feature {feature!r}"
                    )
                if feature in outputs and outputs[feature] != selected.name:
                    raise DefinitionError(
                        f"{where}: feature name {feature!r} comes from both {outputs[feature]!r} "
                        f"and {selected.name!r}; request it with full feature names or select one"
                    )
                outputs[feature] = selected.name


def _validate_permissions(contents: RepoContents, project: str) -> None:
    """Every named view, service and project exists, so a typo cannot grant nothing silently."""
    for permission in contents.permissions.values():
        where = f"{contents.origin[('permission', permission.name)]}: permission {permission.name!r}"
        for resource in permission.resources:
            tables: dict[str, dict[str, FeatureView] | dict[str, FeatureService]] = {
                "feature_view": contents.feature_views,
                "feature_service": contents.feature_services,
            }
            known = tables.get(resource.kind)
            if known is not None and resource.name not in known:
                raise DefinitionError(
                    f"{where} names {resource}, which the repo does not define"
                )
            if resource.kind == "project" and resource.name and project and resource.name != project:
                raise DefinitionError(
                    f"{where} names project {resource.name!r}, but this repo is project {project!r}"
                )


def _protos(contents: RepoContents, project: str) -> dict[tuple[Kind, str], Message]:
    out: dict[tuple[Kind, str], Message] = {}
    for e in contents.entities.values():
        out[("entity", e.name)] = convert.entity_to_proto(e)
    for v in contents.feature_views.values():
        out[("feature_view", v.name)] = convert.view_to_proto(v)
    for o in contents.on_demand_views.values():
        out[("on_demand_feature_view", o.name)] = convert_transforms.on_demand_view_to_proto(
            o, contents.function_hashes
        )
    for s in contents.feature_services.values():
        out[("feature_service", s.name)] = convert.service_to_proto(s, contents.function_hashes)
    for p in contents.permissions.values():
        out[("permission", p.name)] = convert.permission_to_proto(p, project)
    return out


def _stored(proto: pb.Registry) -> dict[tuple[Kind, str], Message]:
    out: dict[tuple[Kind, str], Message] = {}
    for e in proto.entities:
        out[("entity", e.name)] = e
    for v in proto.feature_views:
        out[("feature_view", v.name)] = v
    for o in proto.on_demand_feature_views:
        out[("on_demand_feature_view", o.name)] = o
    for s in proto.feature_services:
        out[("feature_service", s.name)] = s
    for p in proto.permissions:
        out[("permission", p.name)] = p
    return out


def _grant(message: Message) -> str:
    """What a permission grants, for the plan: ``who: ACTIONS on resources``."""
    if not isinstance(message, pb.Permission):
        return ""
    who = [*message.principals, *(f"group {g}" for g in message.groups)]
    actions = [Action(a).name for a in message.actions]
    resources = [str(convert.resource_from_proto(r)) for r in message.resources]
    return f"{', '.join(who)}: {', '.join(actions)} on {', '.join(resources)}"


def _differences(old: Message, new: Message) -> str:
    changed = [
        f.name for f in new.DESCRIPTOR.fields if getattr(old, f.name) != getattr(new, f.name)
    ]
    return "changed: " + ", ".join(changed)


def diff(proto: pb.Registry, contents: RepoContents, project: str) -> Plan:
    """What applying `contents` on top of `proto` would change."""
    old, new = _stored(proto), _protos(contents, project)
    order: dict[Kind, int] = {
        "entity": 0, "feature_view": 1, "on_demand_feature_view": 2, "feature_service": 3,
        "permission": 4,
    }
    items: list[PlanItem] = []
    for key in sorted(set(old) | set(new), key=lambda k: (order[k[0]], k[1])):
        kind, name = key
        if key not in old:
            items.append(PlanItem(kind, name, "add", _grant(new[key])))
        elif key not in new:
            items.append(PlanItem(kind, name, "remove", _grant(old[key])))
        elif old[key] != new[key]:
            detail = _differences(old[key], new[key])
            grant = _grant(new[key])
            notes = transform_notes(proto, old[key], new[key]) or (f"now {grant}" if grant else "")
            items.append(PlanItem(kind, name, "change", f"{detail}; {notes}" if notes else detail))
    if proto.project.name and proto.project.name != project:
        raise DefinitionError(
            f"registry holds project {proto.project.name!r} but quiver.yaml says {project!r}; "
            f"use a separate registry directory per project"
        )
    return Plan(project, proto.version, items)


def plan(config: QuiverConfig) -> Plan:
    """Validate the repo and compute what `apply` would change."""
    contents = load_repo(config.repo_path, config.project)
    store = RegistryStore(config.registry_path)
    base = store.latest_version()
    proto = store.read(base) if base else pb.Registry()
    return diff(proto, contents, config.project)


def apply(config: QuiverConfig) -> tuple[Plan, Snapshot | None]:
    """Validate the repo and store a new registry version if anything changed."""
    contents = load_repo(config.repo_path, config.project)
    store = RegistryStore(config.registry_path)
    result: dict[str, Plan] = {}

    def change(proto: pb.Registry) -> str | None:
        result["plan"] = diff(proto, contents, config.project)
        if result["plan"].empty and proto.project.description == config.description:
            return None
        _rebuild(proto, contents, config)
        return "apply"

    snapshot = store.commit(change)
    return result["plan"], snapshot


def _rebuild(proto: pb.Registry, contents: RepoContents, config: QuiverConfig) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    stored_views = {v.name: v for v in proto.feature_views}
    proto.project.name = config.project
    proto.project.description = config.description
    del proto.entities[:]
    del proto.feature_views[:]
    del proto.feature_services[:]
    del proto.on_demand_feature_views[:]
    del proto.permissions[:]
    proto.entities.extend(convert.entity_to_proto(e) for _, e in sorted(contents.entities.items()))
    proto.permissions.extend(
        convert.permission_to_proto(p, config.project) for _, p in sorted(contents.permissions.items())
    )
    proto.feature_services.extend(
        convert.service_to_proto(s, contents.function_hashes)
        for _, s in sorted(contents.feature_services.items())
    )
    proto.on_demand_feature_views.extend(
        convert_transforms.on_demand_view_to_proto(v, contents.function_hashes)
        for _, v in sorted(contents.on_demand_views.items())
    )
    for name, view in sorted(contents.feature_views.items()):
        view_proto = convert.view_to_proto(view)
        proto.feature_views.append(view_proto)
        meta = proto.view_meta[name]
        if name not in stored_views:
            meta.created_at.FromDatetime(now)
        if stored_views.get(name) != view_proto:
            meta.updated_at.FromDatetime(now)
            meta.defined_in_version = proto.version + 1
        assign_bins(meta.layout, view, stored_views.get(name))
