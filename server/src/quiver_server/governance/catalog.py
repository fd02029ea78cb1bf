"""The catalog: every object with its owner, description, tags, version history
and what uses it, searchable by text.

Version history comes from the stored registry versions: an object's entry
lists the versions in which its definition was created, changed or removed
(materialization versions, which change no definition, are not listed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from google.protobuf import message

from quiver.errors import InvalidArgumentError, NotFoundError
from quiver.registry.v1 import governance_pb2 as gpb
from quiver.registry.v1 import registry_pb2 as rpb
from quiver_server.governance.datasets import DatasetStore, label
from quiver_server.governance.paths import GovernancePaths
from quiver_server.registry.store import RegistryStore

KINDS = ("entity", "feature_view", "feature", "feature_service", "training_dataset")
DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class _Object:
    kind: str
    name: str
    description: str
    owner: str
    tags: dict[str, str]


def _objects(proto: rpb.Registry) -> Iterator[tuple[_Object, bytes]]:
    """Every definition in a registry version, with its serialized form."""
    for entity in proto.entities:
        yield _Object("entity", entity.name, entity.description, entity.owner, dict(entity.tags)), \
            _bytes(entity)
    for view in proto.feature_views:
        yield _Object("feature_view", view.name, view.description, view.owner, dict(view.tags)), \
            _bytes(view)
        for feature in view.features:
            # A feature's owner is its view's.
            yield _Object("feature", f"{view.name}:{feature.name}", feature.description, view.owner,
                          dict(feature.tags)), _bytes(feature)
    for service in proto.feature_services:
        yield _Object("feature_service", service.name, service.description, service.owner,
                      dict(service.tags)), _bytes(service)


def _bytes(msg: message.Message) -> bytes:
    return msg.SerializeToString(deterministic=True)


class Catalog:
    """Search and describe a project's objects.

    Args:
        paths: Governance layout (training datasets).
        registry: The registry store (definitions and their history).
    """

    def __init__(self, paths: GovernancePaths, registry: RegistryStore) -> None:
        self.paths = paths
        self.registry = registry
        self._versions: dict[int, tuple[str, dict[tuple[str, str], bytes]]] = {}

    def search(
        self, text: str, kinds: Sequence[str] = (), limit: int = 0, *, only: set[str] | None = None,
    ) -> list[gpb.CatalogEntry]:
        """Entries whose name, description, owner or tags contain every word of `text`.

        `only` ("kind:name") limits the entries, and what they list as users,
        to those objects (the ones a caller may describe); None means all.

        Raises:
            InvalidArgumentError: empty text, an unknown kind or a negative limit.
        """
        words = text.lower().split()
        if not words:
            raise InvalidArgumentError.for_field("text", "give at least one word to search for")
        _check_kinds(kinds)
        if limit < 0:
            raise InvalidArgumentError.for_field("limit", "must be 0 (the default, 100) or more")
        found: list[tuple[bool, gpb.CatalogEntry]] = []
        for entry in self.entries(kinds, only=only):
            fields = {
                "name": entry.name.lower(), "description": entry.description.lower(),
                "owner": entry.owner.lower(),
                "tag": " ".join(f"{k}={v}" for k, v in entry.tags.items()).lower(),
            }
            if all(any(w in value for value in fields.values()) for w in words):
                entry.matched.extend(f for f, value in fields.items() if any(w in value for w in words))
                found.append((entry.matched[0] == "name", entry))
        found.sort(key=lambda item: (not item[0], KINDS.index(item[1].kind), item[1].name))
        return [entry for _, entry in found[: limit or DEFAULT_LIMIT]]

    def entry(self, kind: str, name: str, *, only: set[str] | None = None) -> gpb.CatalogEntry:
        """One object's entry (`only` as in `search`).

        Raises:
            InvalidArgumentError: an empty name or an unknown kind.
            NotFoundError: no such object.
        """
        if not name:
            raise InvalidArgumentError.for_field("name", "must not be empty")
        if kind not in KINDS:
            raise InvalidArgumentError.for_field("kind", f"{kind!r} is not a kind; use one of {', '.join(KINDS)}")
        for entry in self.entries([kind], only=only):
            if entry.name == name:
                return entry
        raise NotFoundError(f"{kind.replace('_', ' ')} {name!r} does not exist",
                            reason="OBJECT_NOT_FOUND", metadata={kind: name})

    def entries(
        self, kinds: Sequence[str] = (), *, only: set[str] | None = None
    ) -> list[gpb.CatalogEntry]:
        """Every object of the newest registry version (and every training dataset);
        `only` as in `search`."""
        wanted = set(kinds or KINDS)
        latest = self.registry.latest()
        datasets = list(DatasetStore(self.paths).all())
        history = self._history()
        used = _uses(latest.proto, datasets)
        entries = []
        for obj, _ in _objects(latest.proto):
            if obj.kind in wanted:
                entry = gpb.CatalogEntry(kind=obj.kind, name=obj.name, description=obj.description,
                                         owner=obj.owner, tags=obj.tags)
                entry.versions.extend(history.get((obj.kind, obj.name), []))
                entry.used_by.extend(sorted(used.get((obj.kind, obj.name), set())))
                entries.append(entry)
        if "training_dataset" in wanted:
            for record in datasets:
                entry = gpb.CatalogEntry(kind="training_dataset", name=label(record),
                                         description=record.description, owner=record.created_by,
                                         tags=dict(record.tags))
                entry.versions.add(registry_version=record.registry_version,
                                   created_at=record.created_at, change="created")
                entries.append(entry)
        if only is None:
            return entries
        kept = [e for e in entries if f"{e.kind}:{e.name}" in only]
        for entry in kept:
            users = [u for u in entry.used_by if u in only]
            del entry.used_by[:]
            entry.used_by.extend(users)
        return kept

    def _history(self) -> dict[tuple[str, str], list[gpb.CatalogVersion]]:
        """Per object, the registry versions where its definition changed."""
        history: dict[tuple[str, str], list[gpb.CatalogVersion]] = {}
        previous: dict[tuple[str, str], bytes] = {}
        for version in self.registry.versions():
            created_at, current = self._definitions(version)
            for key, data in current.items():
                change = "created" if key not in previous else "changed" if previous[key] != data else ""
                if change:
                    history.setdefault(key, []).append(_version(version, created_at, change))
            for key in previous.keys() - current.keys():
                history.setdefault(key, []).append(_version(version, created_at, "removed"))
            previous = current
        return history

    def _definitions(self, version: int) -> tuple[str, dict[tuple[str, str], bytes]]:
        cached = self._versions.get(version)
        if cached is None:
            proto = self.registry.read(version)
            cached = (proto.created_at.ToJsonString(),
                      {(o.kind, o.name): data for o, data in _objects(proto)})
            self._versions[version] = cached
        return cached


def _version(version: int, created_at: str, change: str) -> gpb.CatalogVersion:
    entry = gpb.CatalogVersion(registry_version=version, change=change)
    entry.created_at.FromJsonString(created_at)
    return entry


def _uses(proto: rpb.Registry, datasets: Iterable[gpb.TrainingDataset]) -> dict[tuple[str, str], set[str]]:
    used: dict[tuple[str, str], set[str]] = {}

    def add(kind: str, name: str, user: str) -> None:
        used.setdefault((kind, name), set()).add(user)

    features = {v.name: [f.name for f in v.features] for v in proto.feature_views}
    for view in proto.feature_views:
        for entity in view.entities:
            add("entity", entity, f"feature_view:{view.name}")
    for service in proto.feature_services:
        for projection in service.projections:
            add("feature_view", projection.feature_view, f"feature_service:{service.name}")
            for feature in projection.features or features.get(projection.feature_view, []):
                add("feature", f"{projection.feature_view}:{feature}", f"feature_service:{service.name}")
    for record in datasets:
        user = f"training_dataset:{label(record)}"
        for ref in record.feature_refs:
            add("feature", ref, user)
        for history in record.histories:
            add("feature_view", history.feature_view, user)
        if record.feature_service:
            add("feature_service", record.feature_service, user)
    return used


def _check_kinds(kinds: Sequence[str]) -> None:
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            raise InvalidArgumentError.for_field(
                f"kinds[{i}]", f"{kind!r} is not a kind; use one of {', '.join(KINDS)}"
            )
