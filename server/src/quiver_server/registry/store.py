"""Versioned registry storage: one immutable protobuf file per version.

Layout under the registry directory::

    v00000001.pb  v00000002.pb  ...

A new version is written to a temporary file and linked into place; the link
fails if another writer took the same number first, and the commit is retried
on the newer version. Old versions stay readable (`quiver registry history`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path

from quiver.errors import FailedPreconditionError
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.registry.snapshot import Snapshot

_VERSION_FILE = re.compile(r"^v(\d{8})\.pb$")
_MAX_COMMIT_ATTEMPTS = 20


class RegistryStore:
    """Reads and writes registry versions in a local directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def versions(self) -> list[int]:
        if not self.path.is_dir():
            return []
        found = (_VERSION_FILE.match(p.name) for p in self.path.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest_version(self) -> int:
        versions = self.versions()
        return versions[-1] if versions else 0

    def read(self, version: int) -> pb.Registry:
        proto = pb.Registry()
        file = self._file(version)
        try:
            proto.ParseFromString(file.read_bytes())
        except FileNotFoundError:
            raise FailedPreconditionError(f"registry version {version} does not exist at {self.path}") from None
        return proto

    def latest(self) -> Snapshot:
        """The newest version; FailedPreconditionError if nothing was applied yet."""
        version = self.latest_version()
        if version == 0:
            raise FailedPreconditionError(
                f"no registry at {self.path}: run `quiver apply` in the feature repo first",
                reason="REGISTRY_EMPTY",
            )
        return Snapshot(self.read(version))

    def latest_or_empty(self, project: str) -> Snapshot:
        version = self.latest_version()
        return Snapshot(self.read(version)) if version else Snapshot.empty(project)

    def commit(self, change: Callable[[pb.Registry], str | None]) -> Snapshot | None:
        """Apply `change` to a copy of the newest version and store the result.

        `change` edits the message in place and returns the cause to record, or
        None to store nothing. It is called again if a concurrent writer wins.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        for _ in range(_MAX_COMMIT_ATTEMPTS):
            base = self.latest_version()
            proto = self.read(base) if base else pb.Registry()
            cause = change(proto)
            if cause is None:
                return None
            proto.version = base + 1
            proto.cause = cause
            proto.created_at.FromDatetime(datetime.now(UTC))
            if self._publish(proto):
                return Snapshot(proto)
        raise FailedPreconditionError(f"registry at {self.path} is changing too fast to commit")

    def prune(self, keep: int, pinned: Collection[int] = ()) -> list[int]:
        """Delete all but the newest `keep` versions and the `pinned` ones; returns
        the versions removed.

        Training-set tickets pin the registry version they were planned on, so
        a ticket whose version was pruned is reported stale rather than served.
        Stored training datasets pin theirs for good (the caller passes them).
        """
        if keep < 1:
            raise FailedPreconditionError("prune must keep at least the newest version")
        old = [v for v in self.versions()[:-keep] if v not in pinned]
        for version in old:
            self._file(version).unlink(missing_ok=True)
        return old

    def _publish(self, proto: pb.Registry) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(proto.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self._file(proto.version))
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def _file(self, version: int) -> Path:
        return self.path / f"v{version:08d}.pb"
