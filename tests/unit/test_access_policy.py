"""The access policy and its building blocks, without servers: Permission definitions,
apply/plan of permissions, matching rules, static tokens and the verification cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from quiver import Action, Permission, Resource
from quiver.errors import DefinitionError, UnauthenticatedError
from quiver_server.auth.authenticator import Authenticator
from quiver_server.auth.policy import Policy
from quiver_server.auth.principal import Principal
from quiver_server.auth.static import StaticTokens, hash_token, new_token, read_tokens_file
from quiver_server.config import QuiverConfig, load_config
from quiver_server.registry.store import RegistryStore
from quiver_server.repo import apply, plan


def test_permission_validates_itself() -> None:
    with pytest.raises(DefinitionError, match="at least one principal or group"):
        Permission(name="p", actions=[Action.DESCRIBE], resources=[Resource.project()])
    with pytest.raises(DefinitionError, match="'read' is not an action; allowed: DESCRIBE"):
        Permission(name="p", principals=["a"], actions=["read"], resources=[Resource.project()])
    with pytest.raises(DefinitionError, match="resources must select"):
        Permission(name="p", principals=["a"], actions=[Action.DESCRIBE], resources=[])
    with pytest.raises(DefinitionError, match="must be a list of strings, not a string"):
        Permission(name="p", principals="alice", actions=[Action.DESCRIBE],  # type: ignore[arg-type]
                   resources=[Resource.project()])
    with pytest.raises(DefinitionError, match="resource kind 'table' is unknown"):
        Resource("table", "x")
    granted = Permission(name="p", groups=["ml"], actions=["read_online", Action.DESCRIBE],
                         resources=[Resource.tag("tier", "gold")])
    assert granted.actions == (Action.READ_ONLINE, Action.DESCRIBE)


def test_apply_stores_permissions_and_plan_shows_them(demo_config: QuiverConfig) -> None:
    rendered = plan(demo_config).render()
    assert ("+ permission fraud_model_reads (fraud-model: READ_ONLINE on feature service "
            "fraud_model_v1)") in rendered
    apply(demo_config)
    snapshot = RegistryStore(demo_config.registry_path).latest()
    assert {p.name for p in snapshot.permissions} == {
        "fraud_model_reads", "txn_stats_pipeline", "data_scientists"}
    stored = {p.name: p for p in snapshot.proto.permissions}
    assert stored["data_scientists"].resources[0].project == "fraud_detection"
    # A change is a plan item of its own.
    path = demo_config.repo_path / "permissions.py"
    path.write_text(path.read_text().replace('principals=["fraud-model"]',
                                             'principals=["fraud-model", "fraud-model-canary"]'))
    changed = plan(demo_config).render()
    assert "~ permission fraud_model_reads (changed: principals; now fraud-model, fraud-model-canary" in changed


@pytest.mark.parametrize(("resource", "message"), [
    ('Resource.feature_view("user_stats")', "names feature view user_stats, which the repo does not define"),
    ('Resource.feature_service("fraud_model_v2")', "names feature service fraud_model_v2"),
    ('Resource.project("payroll")', "names project 'payroll', but this repo is project 'fraud_detection'"),
])
def test_permissions_naming_unknown_objects_are_refused(demo_config: QuiverConfig, resource: str,
                                                       message: str) -> None:
    (demo_config.repo_path / "extra.py").write_text(
        "from quiver import Action, Permission, Resource\n"
        f"typo = Permission(name='typo', principals=['a'], actions=[Action.DESCRIBE], resources=[{resource}])\n"
    )
    with pytest.raises(DefinitionError, match=message):
        apply(demo_config)
    assert RegistryStore(demo_config.registry_path).latest_version() == 0


@pytest.fixture
def snapshot(applied_demo: QuiverConfig) -> object:
    return RegistryStore(applied_demo.registry_path).latest()


def _policy(snapshot: object, *permissions: Permission) -> Policy:
    return Policy("fraud_detection", permissions, snapshot.feature_services)  # type: ignore[attr-defined]


def test_matching_rules(snapshot: object) -> None:
    views = snapshot.feature_views  # type: ignore[attr-defined]
    stats, profile = views["user_transaction_stats"], views["user_profile"]
    alice = Principal("alice", frozenset({"ml"}))
    someone = Principal("someone")
    policy = _policy(
        snapshot,
        Permission(name="svc", principals=["alice"], actions=[Action.READ_ONLINE],
                   resources=[Resource.feature_service("user_risk")]),
        Permission(name="tag", groups=["ml"], actions=[Action.READ_OFFLINE],
                   resources=[Resource.tag("tier", "gold")]),
        Permission(name="all", principals=["*"], actions=[Action.DESCRIBE],
                   resources=[Resource.feature_view("user_profile")]),
    )
    # A service grant covers exactly the features it selects, however they are asked for.
    assert policy.allows_feature(alice, Action.READ_ONLINE, stats, stats.feature("txn_count_24h"))
    assert not policy.allows_feature(alice, Action.READ_ONLINE, stats, stats.feature("txn_count_1h"))
    assert policy.allows_feature(alice, Action.READ_ONLINE, profile, profile.feature("credit_score"))
    assert not policy.allows_feature(alice, Action.READ_ONLINE, profile, profile.feature("age"))
    # ... but not DESCRIBE of the views behind it.
    assert not policy.allows_view(alice, Action.DESCRIBE, "user_transaction_stats", stats)
    # Tags match views carrying them (user_transaction_stats is tier=gold), through groups.
    assert policy.allows_feature(alice, Action.READ_OFFLINE, stats, stats.feature("txn_count_1h"))
    assert not policy.allows_feature(alice, Action.READ_OFFLINE, profile, profile.feature("age"))
    # "*" is anyone authenticated; actions never leak into one another.
    assert policy.allows_view(someone, Action.DESCRIBE, "user_profile", profile)
    assert not policy.allows_feature(someone, Action.READ_ONLINE, profile, profile.feature("age"))
    assert not policy.allows_any(someone, Action.DELETE)
    # Unknown names match grants by name only.
    assert not policy.allows_view(someone, Action.DESCRIBE, "payroll", None)
    # Default deny.
    assert not _policy(snapshot).allows_any(alice, Action.DESCRIBE)


def test_service_grant_on_whole_views(snapshot: object) -> None:
    views = snapshot.feature_views  # type: ignore[attr-defined]
    model = Principal("fraud-model")
    policy = _policy(snapshot, Permission(
        name="m", principals=["fraud-model"], actions=[Action.READ_ONLINE],
        resources=[Resource.feature_service("fraud_model_v1")]))
    for view in views.values():
        for feature in view.schema:
            assert policy.allows_feature(model, Action.READ_ONLINE, view, feature)


def test_static_tokens_file(tmp_path: Path) -> None:
    token, entry = new_token("pipeline", groups=["writers"])
    assert token.startswith("qvr_") and entry["sha256"] == hash_token(token)
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [entry]}))
    tokens = StaticTokens(str(path))
    assert tokens.verify(token) == Principal("pipeline", frozenset({"writers"}), "static")
    with pytest.raises(UnauthenticatedError) as caught:
        tokens.verify("qvr_guess")
    assert caught.value.reason == "TOKEN_UNKNOWN"
    assert token not in path.read_text()


@pytest.mark.parametrize(("content", "message"), [
    ("tokens: nope", "expected a mapping with a 'tokens' list"),
    ("tokens: [{name: a, sha256: abc}]", r"tokens\[0\] \(a\): sha256 must be 64 hex digits"),
    ("tokens: [{name: a, sha256: " + "a" * 64 + ", role: admin}]", "unknown keys \\['role'\\]"),
    ("tokens: [{name: a, sha256: " + "a" * 64 + "}, {name: b, sha256: " + "a" * 64 + "}]",
     "the same token hash as 'a'"),
])
def test_bad_tokens_files_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(content)
    with pytest.raises(DefinitionError, match=message):
        read_tokens_file(str(path))


def test_revoked_static_token_stops_working_despite_the_cache(tmp_path: Path) -> None:
    token, entry = new_token("pipeline")
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [entry]}))
    tokens = StaticTokens(str(path), check_seconds=0)
    authenticator = Authenticator(static=tokens, cache_seconds=3600)
    assert authenticator.authenticate(f"Bearer {token}").subject == "pipeline"
    tmp = tmp_path / "tokens.new"
    tmp.write_text(yaml.safe_dump({"tokens": []}))
    os.replace(tmp, path)
    with pytest.raises(UnauthenticatedError):
        authenticator.authenticate(f"Bearer {token}")


def test_a_token_revoked_while_it_is_verified_is_not_cached_as_valid(tmp_path: Path) -> None:
    """The tokens file is replaced (by another call's reload) between this call's lookup
    and its caching: the cache entry must not claim the new file's generation."""
    token, entry = new_token("pipeline")
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [entry]}))

    class RevokedMidway(StaticTokens):
        revoke = True

        def verify(self, token: str) -> Principal:
            principal = super().verify(token)
            if self.revoke:  # another thread reloads the revoking file right now
                self.revoke = False
                tmp = tmp_path / "tokens.new"
                tmp.write_text(yaml.safe_dump({"tokens": []}))
                os.replace(tmp, path)
                self.refresh()
            return principal

    authenticator = Authenticator(static=RevokedMidway(str(path), check_seconds=0),
                                  cache_seconds=3600)
    assert authenticator.authenticate(f"Bearer {token}").subject == "pipeline"
    with pytest.raises(UnauthenticatedError):
        authenticator.authenticate(f"Bearer {token}")


def test_authorization_values(tmp_path: Path) -> None:
    authenticator = Authenticator(mtls="common_name")
    with pytest.raises(UnauthenticatedError, match="needs a client certificate") as caught:
        authenticator.authenticate(None, lambda: None)
    assert caught.value.reason == "CREDENTIALS_MISSING"
    with pytest.raises(UnauthenticatedError, match="'Bearer <token>'"):
        Authenticator(static=None, mtls=None).authenticate("Basic dXNlcjpwdw==")


def test_auth_config_is_checked(tmp_path: Path) -> None:
    (tmp_path / "quiver.yaml").write_text(
        "project: p\nauth: {enabled: true}\n")
    with pytest.raises(DefinitionError, match="no principal source is"):
        load_config(tmp_path, env={})
    (tmp_path / "quiver.yaml").write_text(
        "project: p\nauth: {enabled: true, mtls: {enabled: true}}\n")
    with pytest.raises(DefinitionError, match="set serving.tls.client_ca_file"):
        load_config(tmp_path, env={})
    (tmp_path / "quiver.yaml").write_text(
        "project: p\nserving: {tls: {cert_file: a.crt}}\n")
    with pytest.raises(DefinitionError, match="cert_file and key_file go together"):
        load_config(tmp_path, env={})
    (tmp_path / "quiver.yaml").write_text(
        "project: p\nauth: {enabled: true, oidc: {issuer: 'https://i', audience: q, algorithms: [HS256]}}\n")
    with pytest.raises(DefinitionError, match="algorithms"):
        load_config(tmp_path, env={})


def test_servers_warn_loudly_when_open(tmp_path: Path) -> None:
    import structlog

    from quiver_server.auth.warnings import warn_if_open

    (tmp_path / "quiver.yaml").write_text("project: p\n")
    open_config = load_config(tmp_path, env={})
    (tmp_path / "tokens.yaml").write_text("tokens: []\n")
    (tmp_path / "quiver.yaml").write_text(
        "project: p\nauth: {enabled: true, static: {tokens_file: tokens.yaml}}\n")
    plaintext = load_config(tmp_path, env={})
    with structlog.testing.capture_logs() as logs:
        for component in ("serving", "flight"):
            warn_if_open(open_config, component, "0.0.0.0:1")
        warn_if_open(plaintext, "serving", "0.0.0.0:1")
    events = [(e["log_level"], e["event"].split(":")[0], e.get("component")) for e in logs]
    assert events == [
        ("warning", "AUTHENTICATION IS OFF", "serving"),
        ("warning", "AUTHENTICATION IS OFF", "flight"),
        ("warning", "TLS IS OFF", "serving"),
    ]


def test_signing_keys_over_plain_http_are_warned_about(tmp_path: Path) -> None:
    """Keys fetched over http can be swapped on the way, and then anyone can mint tokens."""
    import structlog

    from quiver_server.auth.warnings import warn_if_open

    def oidc(**settings: str) -> QuiverConfig:
        fields = ", ".join(f"{k}: {v!r}" for k, v in {"audience": "q", **settings}.items())
        (tmp_path / "quiver.yaml").write_text(
            f"project: p\nauth: {{enabled: true, oidc: {{{fields}}}}}\n")
        return load_config(tmp_path, env={})

    with structlog.testing.capture_logs() as logs:
        warn_if_open(oidc(issuer="http://idp.internal/realms/ml"), "serving", "0.0.0.0:1")
        warn_if_open(oidc(issuer="https://idp/realms/ml", jwks_url="http://idp/keys"), "flight", "x")
        warn_if_open(oidc(issuer="https://idp/realms/ml"), "serving", "0.0.0.0:1")
    plain = [e for e in logs if e["event"].startswith("SIGNING KEYS OVER PLAIN HTTP")]
    assert [(e["component"], e["url"]) for e in plain] == [
        ("serving", "http://idp.internal/realms/ml/.well-known/openid-configuration"),
        ("flight", "http://idp/keys"),
    ]
