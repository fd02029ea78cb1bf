"""Signing tickets so that any replica can trust one it did not issue.

A ticket carries everything needed to compute its partition, so a client
could otherwise edit it (another spine, other rows). Tickets are signed with
HMAC-SHA256. The keys come from the first of these that is set:

1. ``flight.ticket_key_file``: a file, typically a mounted Kubernetes Secret;
2. the environment variable named by ``flight.ticket_key_env``
   (``QUIVER_FLIGHT_TICKET_KEYS``);
3. otherwise one key kept in the offline store every replica shares,
   ``<offline root>/_spines/.ticket-key``, created by the first server that
   starts (atomically on a local filesystem; elsewhere a replica that lost the
   race adopts the stored key when a ticket does not verify).

A file or variable holds one or more keys, each the base64 of at least 32
random bytes (``openssl rand -base64 32``), one per line (or separated by
commas); blank lines and ``#`` comments are ignored. The first key signs and
every key verifies, so keys rotate without refusing a ticket: add the new key
second on every replica, then move it first, and drop the old key once the
tickets it signed have expired (``flight.spine_ttl_seconds``). A key file is
read again when a ticket does not verify, so a rotated Secret takes effect
without a restart.

A missing, unreadable or malformed key file, variable or stored key is an
error when the server starts; a running server keeps its keys if a re-read
finds the file broken.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import posixpath
import secrets
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import pyarrow.fs as pafs
import structlog

from quiver.errors import DefinitionError
from quiver_flight.spines import SPINE_DIRECTORY
from quiver_server.config import QuiverConfig
from quiver_server.offline.source import filesystem_and_path, resolve_path

log = structlog.get_logger(__name__)

KEY_FILE = ".ticket-key"
MIN_KEY_BYTES = 32


def parse_keys(text: str, where: str) -> list[bytes]:
    """The keys in `text` (see the module docstring).

    Raises:
        DefinitionError: no key, or one that is not base64 of 32+ bytes.
    """
    keys = []
    for number, line in enumerate(text.replace(",", "\n").splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            key = base64.b64decode(entry.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise DefinitionError(
                f"{where}: key {number} is not base64; write each key as the base64 of "
                f"{MIN_KEY_BYTES}+ random bytes (openssl rand -base64 {MIN_KEY_BYTES})"
            ) from None
        if len(key) < MIN_KEY_BYTES:
            raise DefinitionError(
                f"{where}: key {number} has {len(key)} bytes; ticket keys need at least "
                f"{MIN_KEY_BYTES} (openssl rand -base64 {MIN_KEY_BYTES})"
            )
        keys.append(key)
    if not keys:
        raise DefinitionError(f"{where}: holds no ticket key")
    return keys


class TicketSigner:
    """Signs with the current key and verifies with every key.

    Args:
        load: Reads the keys, current first; raises DefinitionError when they
            are missing or malformed. Called now, and again when a signature
            does not verify (a small file read, cheaper than the call itself).
        source: Where the keys come from, for logs.
    """

    def __init__(self, load: Callable[[], list[bytes]], source: str) -> None:
        self._load = load
        self.source = source
        self._keys = load()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: QuiverConfig, env: Mapping[str, str] | None = None) -> TicketSigner:
        """The signer `config` asks for (see the module docstring).

        Raises:
            DefinitionError: a missing or malformed key file, variable or stored key.
        """
        flight = config.flight
        environment = os.environ if env is None else env
        if flight.ticket_key_file:
            path = Path(config.resolve(flight.ticket_key_file))
            return cls(lambda: _read_key_file(path), "flight.ticket_key_file")
        variable = flight.ticket_key_env
        if environment.get(variable, "").strip():
            keys = parse_keys(environment[variable], f"environment variable {variable}")
            return cls(lambda: keys, variable)
        stored = StoredKey(config.offline_root)
        return cls(stored.load, "the offline store")

    @property
    def current(self) -> bytes:
        return self._keys[0]

    def sign(self, payload: bytes) -> bytes:
        return hmac.new(self.current, payload, hashlib.sha256).digest()

    def verify(self, payload: bytes, signature: bytes) -> bool:
        if self._matches(self._keys, payload, signature):
            return True
        # The keys may have rotated (a new Secret) or been created by another replica.
        with self._lock:
            try:
                keys = self._load()
            except (DefinitionError, OSError) as exc:
                log.error("ticket keys not reloaded; keeping the current ones",
                          source=self.source, error=str(exc))
                return False
            if keys != self._keys:
                log.info("ticket keys reloaded", source=self.source, keys=len(keys))
                self._keys = keys
        return self._matches(keys, payload, signature)

    @staticmethod
    def _matches(keys: list[bytes], payload: bytes, signature: bytes) -> bool:
        return any(
            hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest(), signature)
            for key in keys
        )


def _read_key_file(path: Path) -> list[bytes]:
    where = f"flight.ticket_key_file ({path})"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DefinitionError(f"{where}: no such file; mount the ticket-key Secret there "
                              f"or unset it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"{where}: cannot be read ({exc})") from None
    return parse_keys(text, where)


class StoredKey:
    """The one key kept in the offline store when no key is configured."""

    def __init__(self, offline_root: str) -> None:
        fs, directory = filesystem_and_path(resolve_path(offline_root, SPINE_DIRECTORY))
        self._fs = fs
        self._directory = directory
        self.path = posixpath.join(directory, KEY_FILE)
        self._own: bytes | None = None

    def load(self) -> list[bytes]:
        """The stored key, created if there is none; a key this replica made
        and lost a creation race with stays valid for verifying."""
        key = self._read()
        if key is None:
            key = self._create()
        if self._own is not None and self._own != key:
            return [key, self._own]
        return [key]

    def _read(self) -> bytes | None:
        try:
            with self._fs.open_input_stream(self.path) as stream:
                key = bytes(stream.read())
        except FileNotFoundError:
            return None
        if len(key) != MIN_KEY_BYTES:
            raise DefinitionError(
                f"the ticket key {self.path} is corrupt ({len(key)} bytes, expected "
                f"{MIN_KEY_BYTES}); delete it to have a new one made (tickets already "
                f"issued stop verifying), or set flight.ticket_key_file"
            )
        return key

    def _create(self) -> bytes:
        key = secrets.token_bytes(MIN_KEY_BYTES)
        self._fs.create_dir(self._directory, recursive=True)
        if isinstance(self._fs, pafs.LocalFileSystem):
            temp = posixpath.join(self._directory, f".tmp-key-{secrets.token_hex(8)}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, key)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temp, self.path)  # fails if another server was first
            except FileExistsError:
                pass
            finally:
                os.unlink(temp)
        else:
            with self._fs.open_output_stream(self.path) as stream:
                stream.write(key)
            self._own = key
        stored = self._read()
        return stored if stored is not None else key
