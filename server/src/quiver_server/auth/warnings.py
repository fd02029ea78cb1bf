"""Startup warnings about a server that is open to its network."""

from __future__ import annotations

import structlog

from quiver_server.config import QuiverConfig

log = structlog.get_logger("quiver.security")


def warn_if_open(config: QuiverConfig, component: str, address: str) -> None:
    """Log loudly when `component` ("serving" or "flight") serves without auth or TLS."""
    tls = config.serving.tls if component == "serving" else config.flight.tls
    if not config.auth.enabled:
        log.warning(
            "AUTHENTICATION IS OFF: anyone who can reach this port can read every feature, "
            "pull training data, push values and delete entities. Set auth.enabled in "
            "quiver.yaml (docs/security.md) before exposing it.",
            component=component, address=address, tls=tls.enabled,
        )
    elif not tls.enabled:
        log.warning(
            "TLS IS OFF: bearer tokens and feature values cross the network in plaintext; "
            "set tls.cert_file and tls.key_file (docs/security.md)",
            component=component, address=address,
        )
    if component == "flight" and config.auth.enabled and config.auth.mtls.enabled:
        log.warning(
            "Arrow Flight does not show client certificates to the server: Flight callers "
            "authenticate with bearer tokens only (flight.tls.client_ca_file still admits only "
            "certificates from that CA)",
            component=component,
        )
    oidc = config.auth.oidc if config.auth.enabled else None
    if oidc is not None:
        url = oidc.jwks_url or oidc.issuer.rstrip("/") + "/.well-known/openid-configuration"
        if url.startswith("http://"):
            log.warning(
                "SIGNING KEYS OVER PLAIN HTTP: whoever can change the issuer's answer on the "
                "way can make the server accept tokens they mint; use an https:// issuer or "
                "jwks_url (docs/security.md)",
                component=component, url=url,
            )
