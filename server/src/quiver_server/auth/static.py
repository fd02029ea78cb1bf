"""Static bearer tokens: named tokens whose SHA-256 hashes live in a file.

The file (mounted from a Kubernetes Secret) holds hashes, never tokens::

    tokens:
      - name: fraud-model                  # shown in the audit log
        sha256: 3b1f...                    # hex SHA-256 of the token
        principal: fraud-model             # default: the name
        groups: [models]

`quiver auth token NAME` prints a new random token and its entry. Tokens are
256-bit random strings, so one unsalted SHA-256 is enough to keep the file
useless to a reader; a slow password hash would only slow every call down.
The file is read again when it changes, so tokens can be added or revoked
without a restart.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from quiver.errors import DefinitionError, UnauthenticatedError
from quiver_server.auth.files import FileWatcher
from quiver_server.auth.principal import Principal

log = structlog.get_logger(__name__)

TOKEN_PREFIX = "qvr_"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RELOAD_CHECK_SECONDS = 1.0


def hash_token(token: str) -> str:
    """The hex SHA-256 a tokens file stores for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str, principal: str | None = None, groups: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """A fresh random token and the tokens-file entry that accepts it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"name": name, "sha256": hash_token(token)}
    if principal and principal != name:
        entry["principal"] = principal
    if groups:
        entry["groups"] = list(groups)
    return token, entry


@dataclass(frozen=True)
class StaticToken:
    name: str
    principal: Principal


def read_tokens_file(path: str) -> dict[str, StaticToken]:
    """Parse a tokens file into hash -> token.

    Raises:
        DefinitionError: naming the file, the entry and what is wrong.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise DefinitionError(f"auth.static.tokens_file {path}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"auth.static.tokens_file {path}: not valid YAML: {exc}") from None
    entries = raw.get("tokens") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise DefinitionError(f"auth.static.tokens_file {path}: expected a mapping with a 'tokens' list")
    tokens: dict[str, StaticToken] = {}
    for i, entry in enumerate(entries):
        where = f"auth.static.tokens_file {path}: tokens[{i}]"
        if not isinstance(entry, dict):
            raise DefinitionError(f"{where}: expected a mapping with name and sha256")
        unknown = set(entry) - {"name", "sha256", "principal", "groups"}
        if unknown:
            raise DefinitionError(f"{where}: unknown keys {sorted(unknown)}; allowed: name, sha256, principal, groups")
        name, digest = entry.get("name"), str(entry.get("sha256", "")).lower()
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"{where}: name must be a non-empty string")
        if not _HEX64.match(digest):
            raise DefinitionError(f"{where} ({name}): sha256 must be 64 hex digits")
        groups = entry.get("groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise DefinitionError(f"{where} ({name}): groups must be a list of strings")
        principal = entry.get("principal") or name
        if not isinstance(principal, str):
            raise DefinitionError(f"{where} ({name}): principal must be a string")
        if digest in tokens:
            raise DefinitionError(f"{where} ({name}): the same token hash as {tokens[digest].name!r}")
        tokens[digest] = StaticToken(name, Principal(principal, frozenset(groups), "static"))
    return tokens


class StaticTokens:
    """Verifies static tokens against a tokens file, following its changes."""

    def __init__(self, path: str, check_seconds: float = _RELOAD_CHECK_SECONDS) -> None:
        self.path = path
        self._tokens = read_tokens_file(path)
        self._watcher = FileWatcher([path], check_seconds)
        self.generation = 0

    def refresh(self) -> int:
        """Re-read the file if it changed (checked at most every `check_seconds`);
        returns the generation, which grows with every reload."""
        self._reload()
        return self.generation

    def _reload(self) -> None:
        if not self._watcher.changed():
            return
        try:
            self._tokens = read_tokens_file(self.path)
        except DefinitionError as exc:
            # A half-written or broken file must not lock everyone out: keep the last good one.
            log.error("tokens file not reloaded; keeping the previous tokens", error=str(exc))
            return
        self.generation += 1
        log.info("tokens file reloaded", tokens=len(self._tokens))

    def verify(self, token: str) -> Principal:
        """The principal of `token`.

        Raises:
            UnauthenticatedError: no entry has its hash.
        """
        self._reload()
        found = self._tokens.get(hash_token(token))
        if found is None:
            raise UnauthenticatedError(
                "the bearer token is not a known token", reason="TOKEN_UNKNOWN"
            )
        return found.principal
