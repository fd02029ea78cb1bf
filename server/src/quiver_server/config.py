"""The one configuration model, read from a feature repo's `quiver.yaml`.

Environment variables override the file in one place, `apply_env_overrides`:
``QUIVER_<SECTION>__<FIELD>=value`` (e.g. ``QUIVER_SERVING__PORT=7000``,
``QUIVER_ONLINE_STORE__HOSTS=["a:3000","b:3000"]``; values are parsed as YAML).
Relative paths are resolved against the repo directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quiver.errors import DefinitionError

CONFIG_FILE = "quiver.yaml"
ENV_PREFIX = "QUIVER_"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SqliteOnlineStoreConfig(_Model):
    """The embedded online store: one SQLite file in WAL mode."""

    type: Literal["sqlite"] = "sqlite"
    path: str = Field("data/online.db", description="SQLite file, relative to the repo.")


class AerospikeTlsConfig(_Model):
    enabled: bool = False
    name: str | None = Field(None, description="TLS name the server certificate carries.")
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


class AerospikeOnlineStoreConfig(_Model):
    """An Aerospike cluster."""

    type: Literal["aerospike"] = "aerospike"
    hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1:3000"], description="seed host:port list")
    namespace: str = "quiver"
    user: str | None = None
    password_env: str = Field(
        "QUIVER_AEROSPIKE_PASSWORD", description="Environment variable holding the password."
    )
    tls: AerospikeTlsConfig = AerospikeTlsConfig()
    connect_timeout_ms: int = Field(1000, ge=1)
    read_timeout_ms: int = Field(50, ge=1, description="Total timeout of one batch read.")
    write_timeout_ms: int = Field(1000, ge=1)
    max_retries: int = Field(1, ge=0)
    replica: Literal["master", "sequence", "prefer_rack", "any"] = "sequence"
    batch_size: int = Field(5000, ge=1, description="Records per batch write.")


OnlineStoreConfig = Annotated[
    SqliteOnlineStoreConfig | AerospikeOnlineStoreConfig, Field(discriminator="type")
]


class OfflineStoreConfig(_Model):
    """Where Parquet history and uploaded spines live."""

    root: str = Field("data", description="Base for relative source paths; a path or URI.")


class TlsConfig(_Model):
    """TLS of a server's port. Files are PEM; they are re-read when they change
    (Kubernetes updates mounted Secrets in place), so certificates rotate
    without a restart (docs/security.md)."""

    cert_file: str | None = Field(None, description="Certificate chain; TLS is on when set.")
    key_file: str | None = Field(None, description="Private key of the certificate.")
    client_ca_file: str | None = Field(
        None, description="CA bundle for client certificates: set it to require mutual TLS."
    )
    reload_check_seconds: float = Field(
        10.0, gt=0, description="How often the files are checked for a new certificate."
    )

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


class ServingConfig(_Model):
    host: str = "0.0.0.0"
    port: int = Field(6566, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="Server processes sharing the port.")
    max_entities: int = Field(1000, ge=1, description="Most entities one request may ask for.")
    max_delete_entities: int = Field(
        1000,
        ge=1,
        description=(
            "Most entities one DeleteEntities request may remove (a delete holds the store's"
            " write lock for all of them)."
        ),
    )
    max_workers_threads: int = Field(
        4,
        ge=1,
        description=(
            "Handler threads per process. Few threads contend less for the GIL and serve more"
            " requests per second; raise it when the store is slow (Aerospike over a network)."
        ),
    )
    grace_seconds: float = Field(10.0, ge=0, description="Drain time on SIGTERM.")
    tls: TlsConfig = TlsConfig()
    health_port: int | None = Field(
        None, ge=0, le=65535,
        description=(
            "Also answer gRPC health checks (only) in plaintext on this port, for probes that "
            "cannot speak TLS or carry tokens (Kubernetes gRPC probes)."
        ),
    )
    heavy_request_entities: int = Field(
        100,
        ge=1,
        description=(
            "A request with more entities (lookups, deleted keys) or pushed rows than this is"
            " heavy; see max_heavy_requests."
        ),
    )
    max_heavy_requests: int = Field(
        2,
        ge=1,
        description=(
            "Heavy requests one server process runs at once; more are answered"
            " RESOURCE_EXHAUSTED at once (retry with backoff), so a few large callers cannot"
            " take every handler thread from small lookups. Below max_workers_threads."
        ),
    )

    max_future_seconds: float = Field(
        300.0,
        ge=0,
        description=(
            "How far ahead of the clock an event or created time may be: pushes with later"
            " times are refused (INVALID_ARGUMENT), since one would pin its value online, and"
            " materialization windows end there at the latest."
        ),
    )

    @model_validator(mode="after")
    def _light_requests_keep_a_thread(self) -> ServingConfig:
        if 1 < self.max_workers_threads <= self.max_heavy_requests:
            raise ValueError(
                f"max_heavy_requests ({self.max_heavy_requests}) must be below "
                f"max_workers_threads ({self.max_workers_threads}), so light lookups always "
                f"find a handler thread"
            )
        return self


class FlightConfig(_Model):
    host: str = "0.0.0.0"
    port: int = Field(8815, ge=0, le=65535)
    max_spine_rows: int = Field(50_000_000, ge=1)
    max_spine_bytes: int = Field(
        2 << 30, ge=1, description="Largest spine one upload may hold, in bytes of Arrow data."
    )
    max_stored_spine_bytes: int = Field(
        20 << 30, ge=1,
        description="Bytes all uploaded spines may take together (checked per replica at upload).",
    )
    spine_ttl_seconds: int = Field(
        86_400, ge=1,
        description="How long an uploaded spine, and a ticket over a Parquet spine, stays valid.",
    )
    spine_sweep_seconds: float = Field(
        300.0, gt=0, description="Seconds between sweeps that delete expired uploaded spines."
    )
    spine_root: str = Field(
        "spines",
        description=(
            "Directory of the Parquet spines a training set may name by path (parquet_path);"
            " relative to the offline store root unless absolute or a URI. It must not hold"
            " feature history or the registry."
        ),
    )
    ticket_key_file: str | None = Field(
        None,
        description=(
            "File of the keys that sign tickets, one base64 key (32+ bytes) per line: the first"
            " signs, the others still verify. Default: the environment variable ticket_key_env,"
            " else a key kept in the offline store."
        ),
    )
    ticket_key_env: str = Field(
        "QUIVER_FLIGHT_TICKET_KEYS",
        description="Environment variable holding ticket keys (same format) when no file is set.",
    )
    max_concurrent_streams: int = Field(
        32, ge=1, description="do_get streams served at once; more are refused (RESOURCE_EXHAUSTED)."
    )
    max_concurrent_uploads: int = Field(
        8, ge=1, description="Spine uploads (do_put) at once; more are refused (RESOURCE_EXHAUSTED)."
    )
    health_port: int = Field(
        8816, ge=0, le=65535,
        description="Port of the grpc.health.v1 service reporting readiness (0 = any free port).",
    )
    health_check_seconds: float = Field(
        5.0, gt=0, description="Seconds between readiness checks (registry, offline store)."
    )
    partition_rows: int = Field(1_000_000, ge=1, description="Spine rows per Flight endpoint.")
    batch_rows: int = Field(65_536, ge=1, description="Rows per streamed record batch.")
    location: str | None = Field(None, description="URI advertised in endpoints; default: reuse the connection.")
    history_cache_bytes: int = Field(
        4 << 30, ge=0, description="Memory for cached history indexes and feature columns."
    )
    grace_seconds: float = Field(
        30.0, ge=0, description="Drain time for in-flight streams on SIGTERM."
    )
    tls: TlsConfig = TlsConfig()


class TracingConfig(_Model):
    """OpenTelemetry tracing (docs/observability.md). A field left out of the file
    falls back to the standard OTEL_* variable that covers it."""

    enabled: bool = Field(False, description="Export spans; also on when OTEL_TRACES_EXPORTER is set.")
    exporter: Literal["otlp_grpc", "otlp_http", "console"] = Field(
        "otlp_grpc", description="Default: from OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_PROTOCOL."
    )
    endpoint: str | None = Field(None, description="Collector endpoint; default from OTEL_* variables.")
    sampling_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="parentbased_traceidratio; default: OTEL_TRACES_SAMPLER."
    )
    service_name: str | None = Field(
        None, description="Default: OTEL_SERVICE_NAME, else quiver-<component> (e.g. quiver-serving)."
    )


class MetricsConfig(_Model):
    enabled: bool = True
    port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics port (not the gRPC port).")
    host: str = Field("0.0.0.0", description="Address the metrics endpoint binds.")
    pushgateway: str | None = Field(
        None, description="host:port of a Pushgateway that batch jobs (materialize) push to."
    )


class LoggingConfig(_Model):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(True, description="One info line per RPC: method, status, duration, entities.")


class TelemetryConfig(_Model):
    tracing: TracingConfig = TracingConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()


Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]


class OidcConfig(_Model):
    """Bearer JWTs from an OpenID Connect issuer (Kubernetes service-account tokens included)."""

    issuer: str = Field(description="Expected `iss` claim, e.g. https://login.example.com/realms/ml.")
    audience: str = Field(description="Expected `aud` claim: what tokens for Quiver are issued to.")
    jwks_url: str | None = Field(
        None,
        description=(
            "Where the signing keys are (https://, http:// or file://); default: the jwks_uri of "
            "<issuer>/.well-known/openid-configuration."
        ),
    )
    ca_file: str | None = Field(None, description="CA bundle for the issuer's HTTPS endpoints.")
    algorithms: list[Algorithm] = Field(
        default_factory=lambda: ["RS256", "ES256"],  # type: ignore[arg-type]
        min_length=1,
        description="Accepted signature algorithms (asymmetric only).",
    )
    principal_claim: str = Field("sub", description="Claim naming the principal (dots descend).")
    groups_claim: str = Field(
        "groups", description="Claim holding the groups, a list or a string (dots descend)."
    )
    leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat.")
    jwks_cache_seconds: int = Field(300, ge=1, description="How long fetched keys are kept.")
    jwks_min_refresh_seconds: int = Field(
        10, ge=0,
        description="Least time between two fetches for an unknown key id (bounds fetches).",
    )


class StaticTokensConfig(_Model):
    """Named tokens whose SHA-256 hashes are listed in a file (`quiver auth token` makes them)."""

    tokens_file: str = Field(description="YAML file of {name, sha256, principal, groups} entries.")


class MtlsAuthConfig(_Model):
    """Client certificates (mutual TLS on the gRPC port) as principals."""

    enabled: bool = False
    principal: Literal["common_name", "uri_san", "dns_san"] = Field(
        "common_name", description="Which part of the certificate names the principal."
    )


class AuthConfig(_Model):
    """Authentication and authorization of both servers (docs/security.md)."""

    enabled: bool = Field(
        False, description="Authenticate every call and enforce the registry's permissions."
    )
    oidc: OidcConfig | None = None
    static: StaticTokensConfig | None = None
    mtls: MtlsAuthConfig = MtlsAuthConfig()
    cache_seconds: float = Field(
        60.0, ge=0, description="How long a verified token is trusted without checking it again."
    )
    cache_entries: int = Field(4096, ge=1, description="Verified tokens kept.")

    @model_validator(mode="after")
    def _sources(self) -> AuthConfig:
        if self.enabled and self.oidc is None and self.static is None and not self.mtls.enabled:
            raise ValueError("auth is enabled but no principal source is: set oidc, static or mtls")
        return self


class MonitoringConfig(_Model):
    """Feature profiles and drift (docs/monitoring.md)."""

    enabled: bool = Field(
        True, description="Profile materialized, pushed, served and training-set values."
    )
    serving_sample_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="Share of GetOnlineFeatures calls whose values are profiled."
    )
    flush_seconds: float = Field(
        300.0, gt=0,
        description="How often a server writes the profiles it has accumulated (one file per view and window each time).",
    )
    window_seconds: int = Field(
        3600, ge=1, description="Width of the windows served and pushed values are grouped in."
    )
    current_window_seconds: int = Field(
        86_400, ge=1, description="`quiver monitor`: the current window is this long, ending now."
    )
    reference_window_seconds: int = Field(
        7 * 86_400, ge=1, description="Trailing reference: this long, ending where the current starts."
    )
    reference: str = Field(
        "trailing",
        pattern=r"^(trailing|training_set:[A-Za-z0-9_.-]{1,128})$",
        description="What `quiver monitor` compares with: trailing, or training_set:NAME.",
    )
    training_set_sketch_rows: int = Field(
        10_000, ge=1,
        description=(
            "Rows per training-set partition fed to the quantile sketches (every k-th row);"
            " counts, moments and categories stay exact."
        ),
    )


class QuiverConfig(_Model):
    """Everything in `quiver.yaml`."""

    project: str = Field(description="Project name; names online tables and sets.")
    description: str = ""
    registry: str = Field("data/registry", description="Directory holding registry versions.")
    offline_store: OfflineStoreConfig = OfflineStoreConfig()
    online_store: OnlineStoreConfig = SqliteOnlineStoreConfig()
    serving: ServingConfig = ServingConfig()
    flight: FlightConfig = FlightConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    auth: AuthConfig = AuthConfig()

    # Not read from the file: the directory the config came from.
    repo_path: Path = Field(Path("."), exclude=True)

    @model_validator(mode="after")
    def _mtls_needs_client_ca(self) -> QuiverConfig:
        if self.auth.enabled and self.auth.mtls.enabled and not self.serving.tls.client_ca_file:
            raise ValueError(
                "auth.mtls names principals by client certificate: set serving.tls.client_ca_file"
            )
        return self

    def resolve(self, path: str) -> str:
        """Resolve a config path against the repo unless it is absolute or a URI."""
        if "://" in path or os.path.isabs(path):
            return path
        return str((self.repo_path / path).resolve())

    @property
    def registry_path(self) -> Path:
        return Path(self.resolve(self.registry))

    @property
    def offline_root(self) -> str:
        return self.resolve(self.offline_store.root)


def load_config(repo: str | Path, env: dict[str, str] | None = None) -> QuiverConfig:
    """Read `quiver.yaml` from `repo`, apply environment overrides and validate."""
    repo_path = Path(repo).resolve()
    config_file = repo_path / CONFIG_FILE
    if not config_file.is_file():
        raise DefinitionError(f"{config_file}: not found; a feature repo needs a {CONFIG_FILE}")
    try:
        raw = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DefinitionError(f"{config_file}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise DefinitionError(f"{config_file}: must be a mapping of settings")
    raw = apply_env_overrides(raw, os.environ if env is None else env)
    try:
        config = QuiverConfig.model_validate({**raw, "repo_path": repo_path})
    except ValidationError as exc:
        raise DefinitionError(f"{config_file}: {_describe(exc)}") from None
    return config


def apply_env_overrides(raw: dict[str, Any], env: os._Environ[str] | dict[str, str]) -> dict[str, Any]:
    """Overlay ``QUIVER_SECTION__FIELD`` variables onto the raw config mapping."""
    merged = dict(raw)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name.startswith("QUIVER_TEST_"):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if path[0] not in QuiverConfig.model_fields or path[0] == "repo_path":
            continue
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = yaml.safe_load(value)
    return merged


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)
