"""Training datasets as registry objects: immutable versions and their status.

Each version is one protobuf file, ``governance/datasets/<name>/v00000001.pb``,
published like a registry version (written aside, then linked into place; the
link fails if another writer took the number, and the next number is tried).
A version never changes. What happens to it later -- an erasure that removed
entities of its spine, a history file rewritten or merged -- is recorded
elsewhere and folded into its `DatasetStatus` when it is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.fs as pafs

from quiver.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from quiver.registry.v1 import governance_pb2 as gpb
from quiver_server.governance.files import read_lines, write_durable
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.spinefile import locate as locate_spine
from quiver_server.offline.source import filesystem_and_path, resolve_path

# Short enough that "<name>.v<version>" is still a valid training-set (profile) name.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,111}$")
_VERSION_FILE = re.compile(r"^v(\d{8})\.pb$")
_MARK = ".erased-"
_MAX_ATTEMPTS = 20


def check_name(name: str, field: str = "name") -> str:
    """A valid dataset name, or INVALID_ARGUMENT naming the field."""
    if not _NAME.match(name or ""):
        raise InvalidArgumentError.for_field(
            field,
            f"{name!r} is not a training dataset name: use letters, digits, '_', '-' and '.', "
            f"starting with a letter or digit, at most 112 characters",
            reason="INVALID_DATASET_NAME",
        )
    return name


def label(dataset: gpb.TrainingDataset) -> str:
    return f"{dataset.name}:{dataset.version}"


def profile_name(dataset: gpb.TrainingDataset) -> str:
    """The training-set name a dataset version's pulls are profiled under."""
    return f"{dataset.name}.v{dataset.version}"


class DatasetStore:
    """Reads and writes training dataset versions."""

    def __init__(self, paths: GovernancePaths) -> None:
        self.paths = paths

    def names(self) -> list[str]:
        if not self.paths.datasets.is_dir():
            return []
        return sorted(p.name for p in self.paths.datasets.iterdir() if p.is_dir() and _NAME.match(p.name))

    def versions(self, name: str) -> list[int]:
        """The version numbers of `name`, oldest first.

        Raises:
            InvalidArgumentError: a malformed name (checked before it becomes a path).
        """
        directory = self.paths.datasets / check_name(name)
        if not directory.is_dir():
            return []
        found = (_VERSION_FILE.match(p.name) for p in directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def publish(self, dataset: gpb.TrainingDataset) -> gpb.TrainingDataset:
        """Store `dataset` as the next version of its name; returns it numbered."""
        check_name(dataset.name)
        record = gpb.TrainingDataset()
        record.CopyFrom(dataset)
        if not record.HasField("created_at"):
            record.created_at.FromDatetime(datetime.now(UTC))
        for _ in range(_MAX_ATTEMPTS):
            versions = self.versions(record.name)
            record.version = (versions[-1] if versions else 0) + 1
            record.profile = profile_name(record)
            if write_durable(self._file(record.name, record.version), record.SerializeToString(),
                             exclusive=True):
                return record
        raise FailedPreconditionError(
            f"training dataset {record.name!r} is changing too fast to add a version",
            reason="DATASET_CONTENDED",
        )

    def read(self, name: str, version: int = 0) -> gpb.TrainingDataset:
        """One version (0: the newest).

        Raises:
            InvalidArgumentError: a malformed name or a negative version.
            NotFoundError: no such dataset or version.
        """
        check_name(name)
        if version < 0:
            raise InvalidArgumentError.for_field("version", "must be 0 (the newest) or more")
        versions = self.versions(name)
        if not versions:
            raise NotFoundError(
                f"training dataset {name!r} does not exist", reason="DATASET_NOT_FOUND",
                metadata={"training_dataset": name},
            )
        version = version or versions[-1]
        if version not in versions:
            raise NotFoundError(
                f"training dataset {name!r} has no version {version}; it has "
                f"{', '.join(str(v) for v in versions)}",
                reason="DATASET_NOT_FOUND", metadata={"training_dataset": name},
            )
        record = gpb.TrainingDataset()
        record.ParseFromString(self._file(name, version).read_bytes())
        return record

    def all(self, name: str = "") -> Iterator[gpb.TrainingDataset]:
        """Every version (of one name, or of all), by name then version."""
        for each in [name] if name else self.names():
            for version in self.versions(each):
                yield self.read(each, version)

    def mark_erased(self, dataset: gpb.TrainingDataset, erasure_id: str) -> None:
        """Record that erasure `erasure_id` removed entities of this dataset's spine."""
        mark = self._file(dataset.name, dataset.version).with_name(
            f"v{dataset.version:08d}{_MARK}{erasure_id}"
        )
        if not mark.exists():
            write_durable(mark, b"")

    def erasures(self, dataset: gpb.TrainingDataset) -> list[str]:
        prefix = f"v{dataset.version:08d}{_MARK}"
        directory = self.paths.datasets / dataset.name
        if not directory.is_dir():
            return []
        return sorted(p.name[len(prefix):] for p in directory.iterdir() if p.name.startswith(prefix))

    def pinned_registry_versions(self) -> set[int]:
        """Registry versions that stored datasets resolve their features in."""
        return {d.registry_version for d in self.all()}

    def status(self, dataset: gpb.TrainingDataset, registry_versions: set[int] | None = None
               ) -> gpb.DatasetStatus:
        """Whether `dataset` can still be pulled cell for cell, and if not, why."""
        status = gpb.DatasetStatus(reproducible=True)
        erased = self.erasures(dataset)
        if erased:
            status.erasure_ids.extend(erased)
            status.reasons.extend(
                f"erasure {e} removed entities of its spine" for e in erased
            )
        if registry_versions is not None and dataset.registry_version not in registry_versions:
            status.reasons.append(f"registry version {dataset.registry_version} was pruned")
        fs, path = locate_spine(self.paths.offline_root, dataset.spine.path)
        if fs.get_file_info(path).type != pafs.FileType.File:
            status.reasons.append(f"its kept spine {dataset.spine.path!r} is gone")
        status.reasons.extend(self.changed_files(dataset))
        status.reproducible = not status.reasons
        return status

    def changed_files(self, dataset: gpb.TrainingDataset) -> list[str]:
        """One line per pinned history file that is gone or changed, naming what changed it."""
        return self.current_files(dataset)[1]

    def current_files(
        self, dataset: gpb.TrainingDataset
    ) -> tuple[dict[str, list[pafs.FileInfo]], list[str]]:
        """The pinned files as they are now, per view, and what keeps the dataset
        from being pulled again (empty when nothing does).

        A pinned file rewritten only by erasures whose entities are not in this
        dataset's spine still yields the same rows -- the rows it lost never
        matched a spine row -- so it is followed through the erasure log (each
        rewrite records the size and modification time before and after) and
        read as it is now. Any other change is a problem, named.
        """
        rewrites = self._rewrites()
        mine = set(self.erasures(dataset))
        current: dict[str, list[pafs.FileInfo]] = {}
        problems: list[str] = []
        for history in dataset.histories:
            location = resolve_path(self.paths.offline_root, history.source_path)
            fs, base = filesystem_and_path(location)
            paths = [_join(base, f.path) for f in history.files]
            infos = fs.get_file_info(paths) if paths else []
            current[history.feature_view] = list(infos)
            for pinned, info in zip(history.files, infos, strict=True):
                if info.type != pafs.FileType.File:
                    cause = self._cause(history.feature_view, pinned.path)
                    problems.append(f"feature view {history.feature_view!r}: history file "
                                    f"{pinned.path!r} {cause or 'was removed'}")
                    continue
                state = (pinned.size, pinned.mtime_ns)
                chain: list[str] = []
                while state != (info.size, info.mtime_ns) and \
                        (history.feature_view, pinned.path, state) in rewrites:
                    erasure, state = rewrites[(history.feature_view, pinned.path, state)]
                    chain.append(erasure)
                if state == (info.size, info.mtime_ns) and not mine.intersection(chain):
                    continue
                cause = self._cause(history.feature_view, pinned.path)
                problems.append(f"feature view {history.feature_view!r}: history file "
                                f"{pinned.path!r} {cause or 'changed'}")
        return current, problems

    def _rewrites(self) -> dict[tuple[str, str, tuple[int, int]], tuple[str, tuple[int, int]]]:
        """(view, file, state before) -> (erasure id, state after), for every erasure rewrite."""
        found = {}
        for record in read_lines(self.paths.erasure_log):
            if record.get("event") == "file_rewritten" and "old_size" in record:
                before = (int(record["old_size"]), int(record["old_mtime_ns"]))
                after = (int(record["size"]), int(record["mtime_ns"]))
                found[(str(record["view"]), str(record["path"]), before)] = (
                    str(record["erasure_id"]), after
                )
        return found

    def _cause(self, view: str, path: str) -> str:
        """What last rewrote or merged a history file, from the erasure and compaction logs."""
        found = ""
        for record in read_lines(self.paths.erasure_log):
            if record.get("event") == "file_rewritten" and record.get("view") == view \
                    and record.get("path") == path:
                found = f"was rewritten by erasure {record.get('erasure_id')} at {record.get('at')}"
        for record in read_lines(self.paths.compaction_log):
            if record.get("event") == "merged" and record.get("view") == view \
                    and path in record.get("files", []):
                found = f"was merged by compaction {record.get('compaction_id')} at {record.get('at')}"
        return found

    def _file(self, name: str, version: int) -> Path:
        return self.paths.datasets / name / f"v{version:08d}.pb"


def _join(base: str, relative: str) -> str:
    return f"{base.rstrip('/')}/{relative}" if relative else base
