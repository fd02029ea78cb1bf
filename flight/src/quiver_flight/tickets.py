"""Signing tickets so that any replica can trust one it did not issue.

A ticket carries everything needed to compute its partition, so a client
could otherwise edit it (another spine, other rows). Tickets are signed with
HMAC-SHA256 under a key stored next to the uploaded spines, in the offline
store every replica shares: ``<offline root>/_spines/.ticket-key``. The first
server to need it creates it; on a local filesystem creation is atomic, and
elsewhere a replica that loses the race re-reads the key when a signature
does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import posixpath
import secrets
import threading

import pyarrow.fs as pafs

from quiver_flight.spines import SPINE_DIRECTORY
from quiver_server.offline.source import filesystem_and_path, resolve_path

KEY_FILE = ".ticket-key"
_KEY_BYTES = 32


class TicketSigner:
    """Signs and verifies ticket payloads with the replicas' shared key."""

    def __init__(self, offline_root: str) -> None:
        fs, directory = filesystem_and_path(resolve_path(offline_root, SPINE_DIRECTORY))
        self._fs = fs
        self._directory = directory
        self._path = posixpath.join(directory, KEY_FILE)
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def sign(self, payload: bytes) -> bytes:
        return hmac.new(self._load(), payload, hashlib.sha256).digest()

    def verify(self, payload: bytes, signature: bytes) -> bool:
        if hmac.compare_digest(self.sign(payload), signature):
            return True
        # Another replica may have created the key after this one read it.
        self._load(refresh=True)
        return hmac.compare_digest(self.sign(payload), signature)

    def _load(self, refresh: bool = False) -> bytes:
        with self._lock:
            if self._key is None or refresh:
                self._key = self._read() or self._create()
            return self._key

    def _read(self) -> bytes | None:
        try:
            with self._fs.open_input_stream(self._path) as stream:
                key = bytes(stream.read())
        except FileNotFoundError:
            return None
        return key if len(key) == _KEY_BYTES else None

    def _create(self) -> bytes:
        key = secrets.token_bytes(_KEY_BYTES)
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
                os.link(temp, self._path)  # fails if another server was first
            except FileExistsError:
                pass
            finally:
                os.unlink(temp)
        else:
            with self._fs.open_output_stream(self._path) as stream:
                stream.write(key)
        return self._read() or key
