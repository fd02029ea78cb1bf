"""Turning a call's credentials into a `Principal`, with verified tokens cached.

Sources, in order: a bearer token (``authorization: Bearer <token>``; a JWT
goes to OIDC, anything else to the static tokens file), then the client
certificate of a mutual-TLS connection. A verified token is remembered for
`auth.cache_seconds` (never past its own expiry), so a lookup does not verify
a signature on every call; a changed static tokens file drops what was
remembered from it, so a revoked token stops working within a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from quiver.errors import UnauthenticatedError
from quiver_server.auth.principal import Principal
from quiver_server.config import QuiverConfig

if TYPE_CHECKING:
    from quiver_server.auth.oidc import OidcVerifier
    from quiver_server.auth.static import StaticTokens

_SCHEME = "bearer "


class Authenticator:
    """Verifies credentials; one per server, shared by all its calls."""

    def __init__(
        self,
        *,
        oidc: OidcVerifier | None = None,
        static: StaticTokens | None = None,
        mtls: str | None = None,
        cache_seconds: float = 60.0,
        cache_entries: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.oidc = oidc
        self.static = static
        self.mtls = mtls
        self._cache_seconds = cache_seconds
        self._cache_entries = cache_entries
        self._clock = clock
        # token -> (principal, trusted until, static tokens generation or -1)
        self._cache: dict[str, tuple[Principal, float, int]] = {}
        self._lock = threading.Lock()
        sources = ["a bearer token" if oidc or static else "", "a client certificate" if mtls else ""]
        self._needed = " or ".join(s for s in sources if s)

    def authenticate(
        self, authorization: str | None, client_certificate: Callable[[], bytes | None] | None = None
    ) -> Principal:
        """The caller's principal.

        Args:
            authorization: The ``authorization`` header or metadata value, if any.
            client_certificate: Returns the PEM client certificate of a mutual-TLS
                connection (None without one).

        Raises:
            UnauthenticatedError: missing, malformed, expired or unverifiable credentials.
        """
        if authorization:
            return self._token(authorization)
        if self.mtls and client_certificate is not None:
            pem = client_certificate()
            if pem:
                from quiver_server.auth.mtls import certificate_principal

                return certificate_principal(pem, self.mtls)
        raise UnauthenticatedError(
            f"this server needs {self._needed}; send metadata 'authorization: Bearer <token>'"
            if self.oidc or self.static else f"this server needs {self._needed}",
            reason="CREDENTIALS_MISSING",
        )

    def _token(self, authorization: str) -> Principal:
        if authorization[:7].lower() != _SCHEME or not authorization[7:].strip():
            raise UnauthenticatedError(
                "the authorization value must be 'Bearer <token>'", reason="TOKEN_MALFORMED"
            )
        token = authorization[7:].strip()
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None and now < cached[1] and (
            cached[2] < 0 or self.static is None or cached[2] == self.static.refresh()
        ):
            return cached[0]
        if token.count(".") == 2 and self.oidc is not None:
            principal, expires = self.oidc.verify(token)
            until = min(expires + self.oidc.config.leeway_seconds, now + self._cache_seconds)
            generation = -1
        elif self.static is not None:
            # The generation is read before the lookup: a reload landing in between
            # then only costs one more lookup, instead of caching a revoked token as
            # belonging to the file that revoked it.
            generation = self.static.generation
            principal = self.static.verify(token)
            until = now + self._cache_seconds
        else:
            raise UnauthenticatedError(
                "the bearer token is not a well-formed JWT", reason="TOKEN_MALFORMED"
            )
        if self._cache_seconds > 0:
            with self._lock:
                if len(self._cache) >= self._cache_entries:
                    self._cache.pop(next(iter(self._cache)))  # the oldest entry
                self._cache[token] = (principal, until, generation)
        return principal


def build_authenticator(config: QuiverConfig) -> Authenticator | None:
    """The authenticator `auth` in quiver.yaml describes; None when auth is off."""
    auth = config.auth
    if not auth.enabled:
        return None
    # Imported only with auth on: PyJWT and cryptography cost every server start otherwise.
    from quiver_server.auth.oidc import OidcVerifier
    from quiver_server.auth.static import StaticTokens

    resolve: Callable[[str | None], str | None] = lambda p: config.resolve(p) if p else None  # noqa: E731
    return Authenticator(
        oidc=OidcVerifier(auth.oidc, resolve) if auth.oidc is not None else None,
        static=StaticTokens(config.resolve(auth.static.tokens_file)) if auth.static else None,
        mtls=auth.mtls.principal if auth.mtls.enabled else None,
        cache_seconds=auth.cache_seconds,
        cache_entries=auth.cache_entries,
    )
