"""Lineage: where an object's data comes from and what uses it, as a tree.

- a feature view: its entities, its source, the materialization runs that
  copied it online (with their windows), the erasures and compactions that
  rewrote its history, and the feature services and training datasets using it;
- a feature service: the views feeding it (and their sources), and the
  training datasets built from it;
- a training dataset: its feature service, the views and history files it
  pinned, its kept spine, who made it and when, and whether it is still
  reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC

from google.protobuf import json_format

from quiver import FeatureView
from quiver.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from quiver.registry.v1 import governance_pb2 as gpb
from quiver_server.governance.datasets import DatasetStore, label
from quiver_server.governance.files import read_lines
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.runs import read_runs
from quiver_server.registry.snapshot import Snapshot

KINDS = ("feature_view", "feature_service", "training_dataset")
_RUNS_SHOWN = 20


def ambiguous(name: str, kinds: Sequence[str]) -> FailedPreconditionError:
    """The error for a name that several kinds of object share."""
    return FailedPreconditionError(
        f"{name!r} names a {' and a '.join(k.replace('_', ' ') for k in kinds)}; say which (kind)",
        reason="AMBIGUOUS_NAME", metadata={"name": name},
    )


def _node(
    kind: str, name: str, detail: str = "", children: Iterable[gpb.LineageNode] = ()
) -> gpb.LineageNode:
    return gpb.LineageNode(kind=kind, name=name, detail=detail, children=list(children))


class Lineage:
    """Answers lineage questions against one registry version and the governance records."""

    def __init__(self, paths: GovernancePaths, snapshot: Snapshot,
                 registry_versions: set[int] | None = None) -> None:
        self.paths = paths
        self.snapshot = snapshot
        self.datasets = DatasetStore(paths)
        self.registry_versions = registry_versions
        self.records = list(self.datasets.all())

    def of(self, name: str, kind: str = "") -> gpb.LineageNode:
        """The lineage tree of the object called `name`.

        Raises:
            InvalidArgumentError: an empty name or an unknown kind.
            NotFoundError: nothing has that name.
            FailedPreconditionError: several kinds share the name and none is given.
        """
        if not name:
            raise InvalidArgumentError.for_field("name", "name a feature view, feature service or training dataset")
        if kind and kind not in KINDS:
            raise InvalidArgumentError.for_field("kind", f"{kind!r} is not a kind; use one of {', '.join(KINDS)}")
        found = [k for k in KINDS if (not kind or k == kind) and self.exists(k, name)]
        if not found:
            raise NotFoundError(
                f"no {kind.replace('_', ' ') if kind else 'feature view, feature service or training dataset'} "
                f"named {name!r} in project {self.snapshot.project!r}",
                reason="OBJECT_NOT_FOUND", metadata={"name": name},
            )
        if len(found) > 1:
            raise ambiguous(name, found)
        if found[0] == "feature_view":
            return self.view(name)
        if found[0] == "feature_service":
            return self.service(name)
        return self.dataset(name)

    def exists(self, kind: str, name: str) -> bool:
        """Whether an object of `kind` is called `name` (a dataset: NAME or NAME:VERSION)."""
        if kind == "feature_view":
            return name in self.snapshot.feature_views
        if kind == "feature_service":
            return name in self.snapshot.feature_services
        base = name.split(":", 1)[0]
        return any(d.name == base for d in self.records)

    def view(self, name: str) -> gpb.LineageNode:
        view = self.snapshot.feature_view(name)
        node = _node("feature_view", name, _view_detail(view))
        node.children.extend(_node("entity", e.name, ", ".join(e.join_key_names)) for e in view.entities)
        node.children.append(self._source(view))
        runs = read_runs(self.paths, name)
        if runs:
            shown = runs[-_RUNS_SHOWN:]
            group = _node("materializations", f"{len(runs)} run(s)",
                         f"showing the last {len(shown)}" if len(shown) < len(runs) else "")
            group.children.extend(_node("materialization", _window(r), _run_detail(r)) for r in shown)
            node.children.append(group)
        node.children.extend(self._rewrites(name))
        for service in sorted(self.snapshot.feature_services.values(), key=lambda s: s.name):
            if any(p.view == name for p in service.projections):
                node.children.append(_node("feature_service", service.name, service.owner))
        for record in self.records:
            if any(h.feature_view == name for h in record.histories):
                node.children.append(self._dataset_leaf(record))
        return node

    def service(self, name: str) -> gpb.LineageNode:
        service = self.snapshot.feature_service(name)
        node = _node("feature_service", name, service.owner)
        for projection in service.projections:
            view = self.snapshot.feature_view(projection.view)
            features = projection.features or tuple(view.feature_names)
            child = _node("feature_view", view.name, f"features: {', '.join(features)}")
            child.children.append(self._source(view))
            node.children.append(child)
        for record in self.records:
            if record.feature_service == name:
                node.children.append(self._dataset_leaf(record))
        return node

    def dataset(self, name: str) -> gpb.LineageNode:
        base, _, version = name.partition(":")
        if version and not version.isdigit():
            raise InvalidArgumentError.for_field("name", f"{name!r}: use NAME or NAME:VERSION")
        record = self.datasets.read(base, int(version or 0))
        status = self.datasets.status(record, self.registry_versions)
        node = _node("training_dataset", label(record), _dataset_detail(record))
        if record.feature_service:
            node.children.append(_node("feature_service", record.feature_service,
                                      f"registry version {record.registry_version}"))
        for history in record.histories:
            refs = [r.split(":", 1)[1] for r in record.feature_refs if r.split(":", 1)[0] == history.feature_view]
            child = _node("feature_view", history.feature_view, f"features: {', '.join(refs)}")
            child.children.append(_node("source", history.source_path,
                                       f"{len(history.files)} file(s) pinned, fingerprint {history.fingerprint}"))
            node.children.append(child)
        node.children.append(_node("spine", record.spine.path,
                                  f"{record.spine.rows} rows, sha256 {record.spine.sha256[:16]}"))
        if record.profile:
            node.children.append(_node("profile", f"training_set:{record.profile}",
                                       "statistics of its pulls (quiver monitor --reference)"))
        node.children.append(_node(
            "status", "reproducible" if status.reproducible else "not reproducible",
            "; ".join(status.reasons),
        ))
        return node

    def _source(self, view: FeatureView) -> gpb.LineageNode:
        source = view.source
        detail = f"timestamp {source.timestamp_field}"
        if source.created_timestamp_field:
            detail += f", created {source.created_timestamp_field}"
        return _node("source", source.path, detail)

    def _rewrites(self, view: str) -> list[gpb.LineageNode]:
        nodes: list[gpb.LineageNode] = []
        erasures: dict[str, gpb.LineageNode] = {}
        for record in read_lines(self.paths.erasure_log):
            erasure_id = str(record.get("erasure_id", ""))
            if record.get("event") == "requested" and view in record.get("views", []):
                erasures[erasure_id] = _node(
                    "erasure", erasure_id,
                    f"requested {record.get('at')} by {record.get('by')}, "
                    f"{record.get('entities')} entit{'y' if record.get('entities') == 1 else 'ies'}; pending",
                )
            elif record.get("event") == "completed" and erasure_id in erasures:
                erasures[erasure_id].detail = erasures[erasure_id].detail.replace(
                    "pending", f"completed {record.get('at')}"
                )
            elif record.get("event") == "file_rewritten" and record.get("view") == view \
                    and erasure_id in erasures:
                erasures[erasure_id].children.append(
                    _node("file", str(record.get("path")), f"{record.get('rows_removed')} row(s) removed")
                )
        nodes.extend(erasures.values())
        for record in read_lines(self.paths.compaction_log):
            if record.get("event") == "completed" and record.get("view") == view:
                nodes.append(_node(
                    "compaction", str(record.get("compaction_id")),
                    f"{record.get('at')} by {record.get('by')}: {record.get('files_before')} files "
                    f"-> {record.get('files_after')}",
                ))
        return nodes

    def _dataset_leaf(self, record: gpb.TrainingDataset) -> gpb.LineageNode:
        return _node("training_dataset", label(record), _dataset_detail(record))


def _view_detail(view: FeatureView) -> str:
    parts = ["online" if view.online else "offline only"]
    if view.ttl:
        parts.append(f"ttl {int(view.ttl.total_seconds())} s")
    if view.owner:
        parts.append(f"owner {view.owner}")
    return ", ".join(parts)


def _window(run: gpb.MaterializationRun) -> str:
    start = run.start.ToDatetime(tzinfo=UTC).isoformat() if run.HasField("start") else "beginning"
    return f"[{start}, {run.end.ToDatetime(tzinfo=UTC).isoformat()})"


def _run_detail(run: gpb.MaterializationRun) -> str:
    return (f"{run.rows_read} rows read, {run.rows_written} written, finished "
            f"{run.finished_at.ToDatetime(tzinfo=UTC).isoformat()}")


def _dataset_detail(record: gpb.TrainingDataset) -> str:
    return (f"{record.row_count} rows, created {record.created_at.ToDatetime(tzinfo=UTC).isoformat()} "
            f"by {record.created_by}")


def render_tree(node: gpb.LineageNode) -> str:
    """The tree as text, one object per line."""
    lines = [_line(node)]

    def walk(children: Iterable[gpb.LineageNode], prefix: str) -> None:
        items = list(children)
        for i, child in enumerate(items):
            last = i == len(items) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{_line(child)}")
            walk(child.children, prefix + ("    " if last else "│   "))

    walk(node.children, "")
    return "\n".join(lines)


def _line(node: gpb.LineageNode) -> str:
    text = f"{node.kind.replace('_', ' ')} {node.name}"
    return f"{text}  ({node.detail})" if node.detail else text


def to_json(node: gpb.LineageNode) -> str:
    return json_format.MessageToJson(node, preserving_proto_field_name=True, indent=2)
