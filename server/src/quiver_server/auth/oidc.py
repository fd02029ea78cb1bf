"""OpenID Connect bearer tokens: JWTs verified against the issuer's JWKS with PyJWT.

Checked: the signature (with a key from the JWKS picked by the token's ``kid``,
in one of the configured asymmetric algorithms, bound to the key), ``iss``,
``aud``, ``exp`` and ``nbf`` (with a small leeway). Keys are fetched once and
kept for `jwks_cache_seconds`; a token whose ``kid`` is unknown makes one
fetch (the issuer rotated its keys), at most every `jwks_min_refresh_seconds`,
so a stream of tokens with made-up key ids cannot turn into a stream of
fetches. Kubernetes service-account tokens are OIDC tokens: the same path
serves pods (docs/security.md).

What the caller learns on failure is the kind of failure (malformed, expired,
wrong issuer or audience, signature not accepted), never which keys exist.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
import structlog

from quiver.errors import UnauthenticatedError, UnavailableError
from quiver_server.auth.principal import Principal
from quiver_server.config import OidcConfig

log = structlog.get_logger(__name__)

_FETCH_TIMEOUT_SECONDS = 5.0
_ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})


def _unauthenticated(message: str, reason: str) -> UnauthenticatedError:
    return UnauthenticatedError(message, reason=reason)


class Jwks:
    """The issuer's signing keys by key id, fetched on demand and cached."""

    def __init__(self, config: OidcConfig, resolve: Any = str) -> None:
        self._config = config
        self._url = config.jwks_url
        self._ssl = ssl.create_default_context(cafile=resolve(config.ca_file)) if config.ca_file else None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def key(self, kid: str | None) -> jwt.PyJWK:
        """The key a token names; fetches the JWKS when it is stale or lacks `kid`.

        Raises:
            UnauthenticatedError: no such key after a fresh fetch.
            UnavailableError: the keys cannot be fetched at all.
        """
        now = time.monotonic()
        key = self._lookup(kid)
        stale = now - self._fetched_at > self._config.jwks_cache_seconds
        if key is None or stale:
            with self._lock:
                # Another thread may have fetched while this one waited.
                key = self._lookup(kid)
                since = time.monotonic() - self._fetched_at
                if (key is None and since >= self._config.jwks_min_refresh_seconds) or (
                    since > self._config.jwks_cache_seconds
                ):
                    self._refresh()
                    key = self._lookup(kid)
        if key is None:
            raise _unauthenticated(
                "the bearer token's signature is not accepted", "TOKEN_SIGNATURE"
            )
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            # A token without a key id is accepted only from an issuer with one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _refresh(self) -> None:
        try:
            if self._url is None:
                discovery = self._get_json(
                    self._config.issuer.rstrip("/") + "/.well-known/openid-configuration"
                )
                uri = discovery.get("jwks_uri")
                if not isinstance(uri, str):
                    raise ValueError("the discovery document has no jwks_uri")
                self._url = uri
            document = self._get_json(self._url)
            keys = _usable_keys(document, self._config.algorithms)
        except (OSError, ValueError) as exc:
            self._fetched_at = time.monotonic()
            log.error("cannot fetch the issuer's signing keys", url=self._url,
                      issuer=self._config.issuer, error=str(exc))
            if self._keys:
                return  # keep serving with the keys we had
            raise UnavailableError(
                "the token issuer's signing keys cannot be fetched", reason="JWKS_UNAVAILABLE"
            ) from None
        self._keys = keys
        self._fetched_at = time.monotonic()
        log.info("signing keys fetched", url=self._url, key_ids=sorted(keys))

    def _get_json(self, url: str) -> Mapping[str, Any]:
        if not url.startswith(("https://", "http://", "file://")):
            raise ValueError(f"{url!r} is not an http(s) or file URL")
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_SECONDS, context=self._ssl) as answer:
            data = json.loads(answer.read(1 << 20))
        if not isinstance(data, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return data


def _usable_keys(document: Mapping[str, Any], algorithms: Sequence[str]) -> dict[str, jwt.PyJWK]:
    """Signing keys of an asymmetric type in an accepted algorithm, by key id."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in _ASYMMETRIC_KEY_TYPES:
            continue  # symmetric keys would let anyone who sees them mint tokens
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in algorithms:
            keys[str(entry.get("kid", ""))] = key
    return keys


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (``realm_access.roles``), None if absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class OidcVerifier:
    """Verifies OIDC JWTs; returns the principal and when its token expires."""

    def __init__(self, config: OidcConfig, resolve: Any = str) -> None:
        self.config = config
        self.jwks = Jwks(config, resolve)
        self._options: dict[str, Any] = {"require": ["exp", "iss", "aud"]}

    def verify(self, token: str) -> tuple[Principal, float]:
        """(principal, expiry as epoch seconds) of a valid token.

        Raises:
            UnauthenticatedError: with a reason naming the kind of failure.
        """
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthenticated("the bearer token is not a well-formed JWT", "TOKEN_MALFORMED") from None
        kid = header.get("kid")
        key = self.jwks.key(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(
                token, key, algorithms=list(config.algorithms), audience=config.audience,
                issuer=config.issuer, leeway=config.leeway_seconds, options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise _unauthenticated("the bearer token has expired", "TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise _unauthenticated("the bearer token is not valid yet", "TOKEN_NOT_YET_VALID") from None
        except jwt.InvalidIssuerError:
            raise _unauthenticated("the bearer token was issued by another issuer", "TOKEN_ISSUER") from None
        except jwt.InvalidAudienceError:
            raise _unauthenticated("the bearer token is meant for another audience", "TOKEN_AUDIENCE") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthenticated(f"the bearer token lacks the {exc.claim!r} claim", "TOKEN_CLAIMS") from None
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
            raise _unauthenticated("the bearer token's signature is not accepted", "TOKEN_SIGNATURE") from None
        except jwt.PyJWTError:
            raise _unauthenticated("the bearer token is not a well-formed JWT", "TOKEN_MALFORMED") from None
        subject = claim(claims, config.principal_claim)
        if not isinstance(subject, str) or not subject:
            raise _unauthenticated(
                f"the bearer token has no {config.principal_claim!r} claim naming the principal",
                "TOKEN_CLAIMS",
            )
        raw_groups = claim(claims, config.groups_claim)
        if isinstance(raw_groups, str):
            groups = frozenset(raw_groups.split())
        elif isinstance(raw_groups, list):
            groups = frozenset(g for g in raw_groups if isinstance(g, str))
        else:
            groups = frozenset()
        return Principal(subject, groups, "oidc"), float(claims["exp"])
