"""Real credentials for the access-control tests: a CA issuing TLS certificates, an
OIDC issuer serving its JWKS over HTTP on loopback with rotating keys, static
token files, and a served demo repo with auth on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from quiver_server.auth.static import new_token

AUDIENCE = "quiver"


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    """A throwaway CA that issues server and client certificates as PEM files."""

    def __init__(self, directory: Path, name: str = "quiver-test-ca") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / f"{name}.crt"
        self.ca_file.write_bytes(self.pem)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, *, server: bool = True, units: tuple[str, ...] = (),
              uri: str | None = None) -> tuple[Path, Path]:
        """Write NAME.crt and NAME.key (a server certificate for localhost/127.0.0.1, or
        a client certificate with `units` as OUs); returns their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units]
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name(attributes)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        )
        names: list[x509.GeneralName] = []
        if server:
            names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        if uri:
            names.append(x509.UniformResourceIdentifier(uri))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return cert_path, key_path


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


@dataclass
class SigningKey:
    kid: str
    private: Any
    algorithm: str

    def jwk(self) -> dict[str, Any]:
        data = json.loads(jwt.algorithms.get_default_algorithms()[self.algorithm].to_jwk(
            self.private.public_key()))
        data.update(kid=self.kid, use="sig", alg=self.algorithm)
        return dict(data)


@dataclass
class OidcIssuer:
    """An OIDC issuer on loopback: discovery document and JWKS over real HTTP.

    `rotate()` adds a new signing key (new kid) and retires the oldest, as
    identity providers do; `fetches` counts JWKS requests.
    """

    keys: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self.url + "/realms/ml"

    def start(self) -> OidcIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/realms/ml/.well-known/openid-configuration":
                    body = {"issuer": issuer.issuer, "jwks_uri": issuer.url + "/realms/ml/jwks"}
                elif self.path == "/realms/ml/jwks":
                    issuer.fetches += 1
                    body = {"keys": [k.jwk() for k in issuer.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.add_key("RS256")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def add_key(self, algorithm: str = "RS256") -> SigningKey:
        private = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                   if algorithm.startswith("RS") else ec.generate_private_key(ec.SECP256R1()))
        key = SigningKey(uuid.uuid4().hex[:12], private, algorithm)
        self.keys.append(key)
        return key

    def rotate(self) -> SigningKey:
        """A new current key; the oldest one is retired."""
        new = self.add_key(self.keys[-1].algorithm)
        self.keys.pop(0)
        return new

    def token(self, subject: str, groups: list[str] | None = None, *, key: SigningKey | None = None,
              issuer: str | None = None, audience: str = AUDIENCE, expires_in: float = 300,
              not_before: float | None = None, **claims: Any) -> str:
        key = key or self.keys[-1]
        now = time.time()
        payload: dict[str, Any] = {
            "iss": issuer or self.issuer, "aud": audience, "sub": subject,
            "iat": int(now), "exp": int(now + expires_in), "jti": uuid.uuid4().hex, **claims,
        }
        if groups is not None:
            payload["groups"] = groups
        if not_before is not None:
            payload["nbf"] = int(now + not_before)
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})


@contextmanager
def oidc_issuer() -> Iterator[OidcIssuer]:
    issuer = OidcIssuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()


def write_tokens(path: Path, specs: dict[str, list[str]]) -> dict[str, str]:
    """A tokens file with one token per principal (value: its groups); returns name -> token."""
    tokens, entries = {}, []
    for name, groups in specs.items():
        token, entry = new_token(name, groups=groups)
        tokens[name] = token
        entries.append(entry)
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return tokens


def auth_settings(repo: Path, *, oidc: OidcIssuer | None = None, tokens_file: Path | None = None,
                  tls_dir: Path | None = None, ca: CertificateAuthority | None = None,
                  mtls: bool = False, cache_seconds: float = 60.0) -> dict[str, Any]:
    """The `auth`, `serving.tls` and `flight.tls` settings for a test repo."""
    auth: dict[str, Any] = {"enabled": True, "cache_seconds": cache_seconds}
    if oidc is not None:
        auth["oidc"] = {"issuer": oidc.issuer, "audience": AUDIENCE, "leeway_seconds": 5,
                        "jwks_min_refresh_seconds": 0}
    if tokens_file is not None:
        auth["static"] = {"tokens_file": str(tokens_file)}
    if mtls:
        auth["mtls"] = {"enabled": True}
    settings: dict[str, Any] = {"auth": auth}
    if tls_dir is not None and ca is not None:
        cert, key = ca.issue("server")
        tls = {"cert_file": str(cert), "key_file": str(key), "reload_check_seconds": 0.05}
        if mtls:
            tls["client_ca_file"] = str(ca.ca_file)
        settings["serving"] = {"tls": tls}
        settings["flight"] = {"tls": tls}
    return settings


def write_settings(repo: Path, settings: dict[str, Any]) -> None:
    """Merge `settings` into the repo's quiver.yaml."""
    config_file = repo / "quiver.yaml"
    raw = yaml.safe_load(config_file.read_text())
    for section, values in settings.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    config_file.write_text(yaml.safe_dump(raw))
