"""Profile files under the offline store root: small, append-only, one per profile.

Layout (any pyarrow filesystem, like the history itself)::

    <offline root>/_monitoring/
        profiles/<view>/<source>/<start>--<end>/<producer>-<id>.qprof
        profiles/<view>/training_set/<name>/<fingerprint>-p<partition>.qprof
        latest-run.pb          the newest `quiver monitor` result (MonitorRun)

Times in directory names are UTC, ``YYYYMMDDTHHMMSSZ``. A file is written
under a hidden temporary name and renamed into place, and never rewritten, so
readers never see half a file and nothing stored is ever lost. Readers merge
every file of a window, whichever worker or replica wrote it.

A file is ``MAGIC``, the payload length (4 bytes, big endian), a serialized
`quiver.monitoring.v1.Profile`, and the payload's CRC-32 (4 bytes): a
truncated or damaged file is detected, reported by name and skipped.
"""

from __future__ import annotations

import re
import struct
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow.fs as pafs
from google.protobuf.message import DecodeError

from quiver import ValueType
from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.monitoring.profile import ViewProfile
from quiver_server.offline.source import filesystem_and_path, resolve_path

__all__ = ["MONITORING_DIRECTORY", "ProfileStore", "Scan"]

MONITORING_DIRECTORY = "_monitoring"
MAGIC = b"QVPROF1\n"
SUFFIX = ".qprof"
_TIME = "%Y%m%dT%H%M%SZ"
_WINDOW = re.compile(r"^(\d{8}T\d{6}Z)--(\d{8}T\d{6}Z)$")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class Scan:
    """Profiles read, and the files that could not be (path -> why)."""

    profiles: list[ViewProfile] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def extend(self, other: Scan) -> None:
        self.profiles.extend(other.profiles)
        self.skipped.update(other.skipped)


def window_name(start: datetime, end: datetime) -> str:
    return f"{start.astimezone(UTC):{_TIME}}--{end.astimezone(UTC):{_TIME}}"


def parse_window(name: str) -> tuple[datetime, datetime] | None:
    match = _WINDOW.match(name)
    if match is None:
        return None
    start, end = (datetime.strptime(m, _TIME).replace(tzinfo=UTC) for m in match.groups())
    return start, end


def encode(profile: pb.Profile | pb.MonitorRun) -> bytes:
    payload = profile.SerializeToString()
    return MAGIC + struct.pack(">I", len(payload)) + payload + struct.pack(">I", zlib.crc32(payload))


def decode_payload(data: bytes) -> bytes:
    """The payload of a framed file; ValueError saying what is wrong with it."""
    head = len(MAGIC) + 4
    if not data.startswith(MAGIC):
        raise ValueError("not a Quiver profile file (bad header)")
    if len(data) < head + 4:
        raise ValueError("truncated")
    (length,) = struct.unpack(">I", data[len(MAGIC):head])
    if len(data) != head + length + 4:
        raise ValueError(f"truncated or padded: {len(data)} bytes, expected {head + length + 4}")
    payload = data[head:head + length]
    (crc,) = struct.unpack(">I", data[head + length:])
    if zlib.crc32(payload) != crc:
        raise ValueError("checksum mismatch")
    return payload


class ProfileStore:
    """Reads and writes profile files under ``<offline root>/_monitoring``."""

    def __init__(self, offline_root: str) -> None:
        self.location = resolve_path(offline_root, MONITORING_DIRECTORY)
        self.fs, self.base = filesystem_and_path(self.location)
        self.profiles = f"{self.base}/profiles"

    # -- writing -----------------------------------------------------------------

    def write(self, profile: ViewProfile, name: str | None = None) -> str:
        """Store `profile` as a new file; returns its path.

        A named file that already exists is left as it is (a training-set
        partition pulled twice is profiled once).
        """
        directory = self._directory(profile)
        self.fs.create_dir(directory, recursive=True)
        if name is None:
            producer = _SAFE.sub("_", profile.producer) or "profile"
            name = f"{producer}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        final = f"{directory}/{name}"
        if self.fs.get_file_info(final).type != pafs.FileType.NotFound:
            return final
        self._publish(final, encode(profile.to_proto()))
        return final

    def write_run(self, run: pb.MonitorRun) -> str:
        """Store a monitor run as the latest one (replacing the previous)."""
        self.fs.create_dir(self.base, recursive=True)
        final = f"{self.base}/latest-run.pb"
        self._publish(final, encode(run))
        return final

    def read_run(self) -> pb.MonitorRun | None:
        """The latest monitor run, or None when there is none (or it is unreadable)."""
        try:
            with self.fs.open_input_stream(f"{self.base}/latest-run.pb") as stream:
                data = stream.read()
            run = pb.MonitorRun()
            run.ParseFromString(decode_payload(data))
            return run
        except (FileNotFoundError, ValueError, DecodeError):
            return None

    def _publish(self, final: str, data: bytes) -> None:
        directory, _, name = final.rpartition("/")
        tmp = f"{directory}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as stream:
            stream.write(data)
        # A rename: atomic on local disks, and it replaces an existing target.
        self.fs.move(tmp, final)

    def _directory(self, profile: ViewProfile) -> str:
        view = f"{self.profiles}/{profile.feature_view}/{profile.source}"
        if profile.source == "training_set":
            return f"{view}/{_SAFE.sub('_', profile.training_set)}"
        return f"{view}/{window_name(profile.window_start, profile.window_end)}"

    # -- reading -----------------------------------------------------------------

    def ensure(self) -> None:
        """Create the profile directory if it is missing."""
        self.fs.create_dir(self.profiles, recursive=True)

    def scan(
        self,
        view: str,
        sources: tuple[str, ...],
        types: Mapping[str, ValueType],
        after: datetime | None = None,
        until: datetime | None = None,
    ) -> Scan:
        """Profiles of `view` from `sources` whose window ends in ``(after, until]``."""
        scan = Scan()
        for source in sources:
            for window, directory in self._windows(view, source):
                end = window[1]
                if (after is not None and end <= after) or (until is not None and end > until):
                    continue
                scan.extend(self._read_directory(directory, types))
        return scan

    def windows(self, view: str, source: str) -> list[tuple[datetime, datetime]]:
        return [window for window, _ in self._windows(view, source)]

    def training_set(self, view: str, name: str, types: Mapping[str, ValueType]) -> Scan:
        """The newest training set stored under `name` for `view` (all its partitions)."""
        scan = self._read_directory(
            f"{self.profiles}/{view}/training_set/{_SAFE.sub('_', name)}", types
        )
        if scan.profiles:
            newest = max(scan.profiles, key=lambda p: p.created_at).training_set_fingerprint
            scan.profiles = [p for p in scan.profiles if p.training_set_fingerprint == newest]
        return scan

    def training_sets(self) -> dict[str, list[str]]:
        """Training-set names with profiles, and the views each covers."""
        found: dict[str, list[str]] = {}
        for view in self._children(self.profiles):
            for name in self._children(f"{self.profiles}/{view}/training_set"):
                found.setdefault(name, []).append(view)
        return found

    def views(self) -> list[str]:
        return self._children(self.profiles)

    def _windows(self, view: str, source: str) -> Iterator[tuple[tuple[datetime, datetime], str]]:
        base = f"{self.profiles}/{view}/{source}"
        for name in self._children(base):
            window = parse_window(name)
            if window is not None:
                yield window, f"{base}/{name}"

    def _children(self, directory: str) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(
            i.base_name for i in infos
            if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_"))
        )

    def _read_directory(self, directory: str, types: Mapping[str, ValueType]) -> Scan:
        scan = Scan()
        infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.path):
            if info.type != pafs.FileType.File or not info.base_name.endswith(SUFFIX):
                continue
            try:
                with self.fs.open_input_stream(info.path) as stream:
                    data = stream.read()
                message = pb.Profile()
                message.ParseFromString(decode_payload(data))
                scan.profiles.append(ViewProfile.from_proto(message, types))
            except (ValueError, RuntimeError, DecodeError, OSError) as exc:
                scan.skipped[info.path] = str(exc) or type(exc).__name__
        return scan
