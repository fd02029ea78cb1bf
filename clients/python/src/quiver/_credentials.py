"""Client credentials: TLS settings and bearer tokens, for gRPC and Flight alike.

Only grpc and pyarrow.flight APIs are used, so the client keeps its three
dependencies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quiver.errors import InvalidArgumentError

Token = str | Callable[[], str]
"""A bearer token, or a function returning the current one (called before every
call, e.g. to re-read a Kubernetes projected service-account token file)."""


@dataclass(frozen=True)
class Tls:
    """TLS settings of a client connection.

    Args:
        ca_file: PEM bundle of the CAs that signed the server certificate;
            None trusts the system's roots.
        cert_file: Client certificate chain for mutual TLS.
        key_file: Its private key.
        server_name: The name to expect in the server certificate, when it
            differs from the host dialled (e.g. connecting by IP address).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidArgumentError.for_field(
                "tls", "cert_file and key_file go together (mutual TLS): set both or neither"
            )

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(CA bundle, client certificate, client key) as PEM bytes, None where unset."""
        return _read(self.ca_file, "ca_file"), _read(self.cert_file, "cert_file"), _read(
            self.key_file, "key_file"
        )


def _read(path: str | None, field: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError.for_field(f"tls.{field}", f"cannot read {path}: {exc.strerror}") from None


def bearer(token: Token) -> str:
    """The ``authorization`` value for `token`."""
    value = token() if callable(token) else token
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError.for_field("token", "the bearer token is empty")
    return f"Bearer {value.strip()}"


def token_file(path: str, max_age: float = 10.0) -> Callable[[], str]:
    """A token source reading `path`, again at most every `max_age` seconds, so a
    rotated token file (a Kubernetes projected service-account token) is picked up.

    Example::

        OnlineClient(target, tls=True,
                     token=token_file("/var/run/secrets/tokens/quiver"))
    """
    state: list[tuple[float, str]] = []

    def read() -> str:
        now = time.monotonic()
        if state and now - state[0][0] < max_age:
            return state[0][1]
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise InvalidArgumentError.for_field("token", f"cannot read {path}: {exc.strerror}") from None
        state[:] = [(now, value)]
        return value

    return read
