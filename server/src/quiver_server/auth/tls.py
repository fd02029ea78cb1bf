"""Server TLS from PEM files that may be replaced while the server runs.

`read_key_pair` loads a certificate chain and key and checks they belong
together (a half-rotated Secret must not be served); `grpc_server_credentials`
gives gRPC credentials whose certificate is swapped in when the files change:
gRPC asks for the current certificate on each new connection, and the files
are looked at, at most, every `reload_check_seconds`. Established connections
keep the certificate they were opened with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from quiver.errors import DefinitionError
from quiver_server.auth.files import FileWatcher
from quiver_server.config import QuiverConfig, TlsConfig

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain, its private key and the client CA, as PEM bytes."""

    cert: bytes
    key: bytes
    client_ca: bytes | None

    @property
    def subject(self) -> str:
        return x509.load_pem_x509_certificate(self.cert).subject.rfc4514_string()


def tls_paths(config: QuiverConfig, tls: TlsConfig) -> list[str]:
    """The files of `tls`, resolved against the repo: cert, key, and client CA if any."""
    paths = [config.resolve(tls.cert_file or ""), config.resolve(tls.key_file or "")]
    if tls.client_ca_file:
        paths.append(config.resolve(tls.client_ca_file))
    return paths


def read_key_pair(paths: list[str], where: str) -> KeyPair:
    """Read and check PEM files: [cert, key] or [cert, key, client CA].

    Raises:
        DefinitionError: a file is missing or unreadable, or the key does not
            match the certificate.
    """
    blobs: list[bytes] = []
    for path in paths:
        try:
            blobs.append(Path(path).read_bytes())
        except OSError as exc:
            raise DefinitionError(f"{where}: cannot read {path}: {exc.strerror}") from None
    try:
        certificate = x509.load_pem_x509_certificate(blobs[0])
    except ValueError:
        raise DefinitionError(f"{where}: {paths[0]} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(blobs[1], password=None)
    except (ValueError, TypeError):
        raise DefinitionError(f"{where}: {paths[1]} is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(encoding, public):
        raise DefinitionError(f"{where}: the key in {paths[1]} does not belong to the certificate in {paths[0]}")
    client_ca = blobs[2] if len(blobs) > 2 else None
    if client_ca is not None:
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise DefinitionError(f"{where}: {paths[2]} is not a PEM certificate bundle") from None
    return KeyPair(blobs[0], blobs[1], client_ca)


class ReloadingKeyPair:
    """The newest valid key pair of some files; a broken update keeps the last good one."""

    def __init__(self, paths: list[str], interval: float, where: str) -> None:
        self.paths = paths
        self.where = where
        self.interval = interval
        self.current = read_key_pair(paths, where)
        self._watcher = FileWatcher(paths, interval)

    def refresh(self, *, force: bool = False) -> KeyPair | None:
        """The new pair if the files changed into a valid one since the last call, else None."""
        if not self._watcher.changed(force=force):
            return None
        try:
            pair = read_key_pair(self.paths, self.where)
        except DefinitionError as exc:
            log.error("certificate not reloaded; keeping the previous one", error=str(exc))
            return None
        if pair == self.current:
            return None
        self.current = pair
        log.info("certificate reloaded", where=self.where, subject=pair.subject)
        return pair


def grpc_server_credentials(pairs: ReloadingKeyPair) -> grpc.ServerCredentials:
    """Server credentials serving the newest certificate of `pairs` to new connections."""

    def configuration(pair: KeyPair) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(pair.key, pair.cert)], pair.client_ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        pair = pairs.refresh()
        return configuration(pair) if pair is not None else None

    # gRPC's stubs say the fetcher never returns None; gRPC itself reads None as "unchanged".
    return grpc.dynamic_ssl_server_credentials(
        configuration(pairs.current), fetch,  # type: ignore[arg-type]
        require_client_authentication=pairs.current.client_ca is not None,
    )
