"""Versioned registry storage: one immutable, self-verifying file per version.

Layout under the registry directory::

    v00000001.pb  v00000002.pb  ...     (v00000003.pb.corrupt: set aside by repair)

A new version is written to a temporary file, flushed to disk and linked into
place; the link fails if another writer took the same number first, and the
commit is retried on the newer version. Old versions stay readable
(`quiver registry history`).

Each file verifies itself (`framing`). A version that does not verify is never
used: servers answer from the newest version that does (`latest_good`), while
writers (`commit`: apply and materialization) refuse to build on top of a bad
newest version, so nothing it held, such as materialization watermarks, is
silently dropped. `quiver registry repair` sets bad versions aside, after which
writers build on the newest good version again.
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
from quiver_server.durable import fsync_directory, make_directories
from quiver_server.registry import framing
from quiver_server.registry.snapshot import Snapshot

_VERSION_FILE = re.compile(r"^v(\d{8})\.pb$")
_SET_ASIDE_FILE = re.compile(r"^v(\d{8})\.pb\.corrupt$")
_SET_ASIDE_SUFFIX = ".corrupt"
_MAX_COMMIT_ATTEMPTS = 20


class RegistryStore:
    """Reads and writes registry versions in a local directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Files never change once written, so a version found good or bad stays
        # so (until prune deletes it or repair renames it away).
        self._bad: dict[int, str] = {}
        self._good: set[int] = set()

    def versions(self) -> list[int]:
        return self._numbers(_VERSION_FILE)

    def set_aside(self) -> list[int]:
        """Versions `repair` set aside."""
        return self._numbers(_SET_ASIDE_FILE)

    def latest_version(self) -> int:
        """The newest version number, whether or not it verifies; 0 when there is none."""
        versions = self.versions()
        return versions[-1] if versions else 0

    def read(self, version: int) -> pb.Registry:
        """Version `version`, verified.

        Raises:
            FailedPreconditionError: it does not exist, or it does not verify
                (reason REGISTRY_VERSION_CORRUPT; the message says how).
        """
        file = self._file(version)
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise FailedPreconditionError(
                f"registry version {version} does not exist", reason="REGISTRY_VERSION_NOT_FOUND"
            ) from None
        try:
            proto = framing.decode(data, version)
        except framing.CorruptVersion as exc:
            self._bad[version] = str(exc)
            raise FailedPreconditionError(
                f"registry version {version} does not verify ({exc}); it is not used: servers "
                f"keep the newest version that verifies, and nothing is written on top of it "
                f"until `quiver registry repair` sets it aside",
                reason="REGISTRY_VERSION_CORRUPT",
                metadata={"registry_version": str(version)},
            ) from None
        self._good.add(version)
        return proto

    def problem(self, version: int) -> str | None:
        """Why `version` does not verify, or None when it does."""
        try:
            self.read(version)
        except FailedPreconditionError as exc:
            if exc.reason == "REGISTRY_VERSION_CORRUPT":
                return self._bad.get(version, exc.message)
            raise
        return None

    def latest(self) -> Snapshot:
        """The newest version, for writers and one-off commands.

        Raises:
            FailedPreconditionError: nothing applied yet, or the newest version
                does not verify.
        """
        version = self.latest_version()
        if version == 0:
            raise FailedPreconditionError(
                f"no registry at {self.path}: run `quiver apply` in the feature repo first",
                reason="REGISTRY_EMPTY",
            )
        return Snapshot(self.read(version))

    def latest_good(self) -> Snapshot | None:
        """The newest version that verifies, for servers; None when none does."""
        version = self.latest_good_version()
        return Snapshot(self.read(version)) if version else None

    def latest_good_version(self) -> int:
        """The newest version number that verifies; 0 when none does.

        Each version is verified once: the answer is remembered, so polling
        costs a directory listing.
        """
        for version in reversed(self.versions()):
            if version in self._good:
                return version
            if version in self._bad:
                continue
            try:
                self.read(version)
            except FailedPreconditionError:
                continue  # does not verify (now remembered), or pruned meanwhile
            return version
        return 0

    def bad_versions(self) -> dict[int, str]:
        """The versions found not to verify so far, with why."""
        return dict(self._bad)

    def latest_or_empty(self, project: str) -> Snapshot:
        version = self.latest_version()
        return Snapshot(self.read(version)) if version else Snapshot.empty(project)

    def commit(self, change: Callable[[pb.Registry], str | None]) -> Snapshot | None:
        """Apply `change` to a copy of the newest version and store the result.

        `change` edits the message in place and returns the cause to record, or
        None to store nothing. It is called again if a concurrent writer wins.
        """
        make_directories(str(self.path))
        for _ in range(_MAX_COMMIT_ATTEMPTS):
            base = self.latest_version()
            # Strict: a bad newest version is refused here, never built upon.
            proto = self.read(base) if base else pb.Registry()
            cause = change(proto)
            if cause is None:
                return None
            # Numbers of set-aside versions are not given out again.
            proto.version = max([base, *self.set_aside()]) + 1
            proto.cause = cause
            proto.created_at.FromDatetime(datetime.now(UTC))
            if self._publish(proto):
                return Snapshot(proto)
        raise FailedPreconditionError(f"registry at {self.path} is changing too fast to commit")

    def prune(self, keep: int, pinned: Collection[int] = ()) -> list[int]:
        """Delete all but the newest `keep` versions that verify and the `pinned`
        ones; returns those removed.

        Versions newer than the oldest one kept stay, whether they verify or
        not (`repair` deals with bad ones). Training-set tickets pin the
        registry version they were planned on, so a ticket whose version was
        pruned is reported stale rather than served. Stored training datasets
        pin theirs for good (the caller passes them).
        """
        if keep < 1:
            raise FailedPreconditionError("prune must keep at least the newest version")
        versions = self.versions()
        good = [v for v in reversed(versions) if self.problem(v) is None][:keep]
        if len(good) < keep:
            return []
        old = [v for v in versions if v < good[-1] and v not in pinned]
        for version in old:
            self._file(version).unlink(missing_ok=True)
        return old

    def repair(self) -> dict[int, str]:
        """Set aside every version that does not verify (renamed ``*.pb.corrupt``).

        Returns the versions set aside, with why. Their numbers are not used again.
        """
        found = {}
        for version in self.versions():
            problem = self.problem(version)
            if problem is None:
                continue
            file = self._file(version)
            os.replace(file, file.with_name(file.name + _SET_ASIDE_SUFFIX))
            self._bad.pop(version, None)
            found[version] = problem
        if found:
            fsync_directory(self.path)
        return found

    def _numbers(self, pattern: re.Pattern[str]) -> list[int]:
        if not self.path.is_dir():
            return []
        found = (pattern.match(p.name) for p in self.path.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _publish(self, proto: pb.Registry) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(framing.encode(proto))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self._file(proto.version))
            except FileExistsError:
                return False
            fsync_directory(self.path)
            return True
        finally:
            os.unlink(tmp)

    def _file(self, version: int) -> Path:
        return self.path / f"v{version:08d}.pb"

