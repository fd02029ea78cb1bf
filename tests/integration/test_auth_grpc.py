"""Access control on the gRPC server: real TLS, static tokens and OIDC tokens from a real
JWKS on loopback; every RPC tried with no token, a bad token, an allowed and a denied principal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
import structlog
from authkit import (
    CertificateAuthority,
    OidcIssuer,
    auth_settings,
    oidc_issuer,
    write_settings,
    write_tokens,
)
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quiver import OnlineClient, Tls
from quiver.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError
from quiver.registry.v1 import registry_service_pb2 as reg
from quiver.registry.v1 import registry_service_pb2_grpc as reg_grpc
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc
from quiver.types.v1 import value_pb2
from quiver_server.config import load_config
from quiver_server.demo_repo import write_demo_repo
from quiver_server.materialize import materialize_range
from quiver_server.repo import apply
from quiver_server.serving.server import create_server

EXTRA_PERMISSIONS = '''
from quiver import Action, Permission, Resource

privacy_requests = Permission(
    name="privacy_requests", principals=["privacy-officer"], actions=[Action.DELETE],
    resources=[Resource.project()],
)

offline_erasure = Permission(
    name="offline_erasure", principals=["privacy-officer"], actions=[Action.WRITE_OFFLINE],
    resources=[Resource.feature_view("user_transaction_stats"), Resource.feature_view("user_profile")],
)
'''

PRINCIPALS = {
    "fraud-model": [],
    "txn-stats-pipeline": [],
    "alice": ["data-scientists"],
    "privacy-officer": [],
    "mallory": [],
}


@dataclass
class Secured:
    target: str
    tokens: dict[str, str]
    ca: CertificateAuthority
    issuer: OidcIssuer
    channel_credentials: grpc.ChannelCredentials
    repo: Path

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.target, self.channel_credentials)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    base = tmp_path_factory.mktemp("secured")
    repo = write_demo_repo(base / "repo", users=20, merchants=5, days=2)
    (repo / "privacy.py").write_text(EXTRA_PERMISSIONS)
    ca = CertificateAuthority(base / "pki")
    tokens = write_tokens(base / "tokens.yaml", PRINCIPALS)
    with oidc_issuer() as issuer:
        write_settings(repo, auth_settings(repo, oidc=issuer, tokens_file=base / "tokens.yaml",
                                           tls_dir=base / "pki", ca=ca))
        config = load_config(repo, env={})
        apply(config)
        end = datetime.now(UTC) + timedelta(seconds=1)
        materialize_range(config, end - timedelta(days=30), end, progress=False)
        app, port = create_server(config, "127.0.0.1", 0)
        with app:
            yield Secured(f"localhost:{port}", tokens, ca, issuer,
                          grpc.ssl_channel_credentials(ca.pem), repo)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


def _values(ints: list[int]) -> value_pb2.Values:
    return value_pb2.Values(int64_values=value_pb2.Int64Array(values=ints))


def _push_request() -> pb.PushFeaturesRequest:
    now = datetime.now(UTC)
    table = pa.table({
        "user_id": pa.array([901], pa.int64()),
        "event_timestamp": pa.array([now], pa.timestamp("us", tz="UTC")),
        "created": pa.array([now], pa.timestamp("us", tz="UTC")),
        "txn_count_1h": [1], "txn_count_24h": [2], "txn_count_7d": [3],
        "txn_amount_sum_24h": [4.0], "txn_amount_avg_7d": [5.0], "txn_amount_max_7d": [6.0],
        "distinct_merchants_7d": pa.array([1], pa.int32()), "declined_count_7d": [0],
        "last_txn_country": ["NL"],
    })
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return pb.PushFeaturesRequest(feature_view="user_transaction_stats",
                                  arrow_ipc=sink.getvalue().to_pybytes(),
                                  to=pb.PUSH_TARGET_ONLINE_AND_OFFLINE)


Call = Callable[[grpc.Channel, tuple[tuple[str, str], ...]], Any]


def _serving(method: str, request: Any) -> Call:
    return lambda channel, md: getattr(pb_grpc.FeatureServingServiceStub(channel), method)(
        request, metadata=md, timeout=10)


def _registry(method: str, request: Any) -> Call:
    return lambda channel, md: getattr(reg_grpc.RegistryServiceStub(channel), method)(
        request, metadata=md, timeout=10)


# method, the call, who may, who may not, what the one who may not gets ("denied" or a
# listing that shows nothing).
RPCS: list[tuple[str, Call, str, str, str]] = [
    ("GetOnlineFeatures", _serving("GetOnlineFeatures", pb.GetOnlineFeaturesRequest(
        feature_service="fraud_model_v1",
        entities={"user_id": _values([1]), "merchant_id": _values([1])})),
     "fraud-model", "alice", "denied"),
    ("PushFeatures", _serving("PushFeatures", _push_request()),
     "txn-stats-pipeline", "fraud-model", "denied"),
    ("DeleteEntities", _serving("DeleteEntities", pb.DeleteEntitiesRequest(
        entities={"user_id": _values([19])})),
     "privacy-officer", "txn-stats-pipeline", "denied"),
    ("DeleteEntities offline", _serving("DeleteEntities", pb.DeleteEntitiesRequest(
        entities={"user_id": _values([18])}, offline=True)),
     "privacy-officer", "txn-stats-pipeline", "denied"),
    ("SearchCatalog", _registry("SearchCatalog", reg.SearchCatalogRequest(text="user")),
     "alice", "fraud-model", "empty"),
    ("GetCatalogEntry", _registry("GetCatalogEntry", reg.GetCatalogEntryRequest(
        kind="feature_view", name="user_profile")),
     "alice", "txn-stats-pipeline", "denied"),
    ("GetLineage", _registry("GetLineage", reg.GetLineageRequest(name="user_profile")),
     "alice", "txn-stats-pipeline", "denied"),
    ("ListProjects", _registry("ListProjects", reg.ListProjectsRequest()),
     "alice", "fraud-model", "empty"),
    ("ListEntities", _registry("ListEntities", reg.ListEntitiesRequest()),
     "alice", "fraud-model", "empty"),
    ("GetEntity", _registry("GetEntity", reg.GetEntityRequest(name="user")),
     "alice", "fraud-model", "denied"),
    ("ListFeatureViews", _registry("ListFeatureViews", reg.ListFeatureViewsRequest()),
     "alice", "fraud-model", "empty"),
    ("GetFeatureView", _registry("GetFeatureView", reg.GetFeatureViewRequest(name="user_profile")),
     "alice", "txn-stats-pipeline", "denied"),
    ("ListFeatureServices", _registry("ListFeatureServices", reg.ListFeatureServicesRequest()),
     "alice", "mallory", "empty"),
    ("GetFeatureService", _registry("GetFeatureService",
                                    reg.GetFeatureServiceRequest(name="fraud_model_v1")),
     "alice", "mallory", "denied"),
]
IDS = [r[0] for r in RPCS]


def _status(error: grpc.RpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no rich status")


def _reason(status: status_pb2.Status) -> tuple[str, dict[str, str]]:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason, dict(info.metadata)


@pytest.mark.parametrize(("method", "call", "allowed", "denied", "outcome"), RPCS, ids=IDS)
def test_every_rpc_refuses_a_call_without_a_token(secured: Secured, method: str, call: Call,
                                                  allowed: str, denied: str, outcome: str) -> None:
    with secured.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        call(channel, ())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reason, _ = _reason(_status(caught.value))
    assert reason == "CREDENTIALS_MISSING"


@pytest.mark.parametrize(("method", "call", "allowed", "denied", "outcome"), RPCS, ids=IDS)
@pytest.mark.parametrize(("token", "reason"), [
    ("qvr_not-a-token-anyone-was-given", "TOKEN_UNKNOWN"),
    ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "TOKEN_SIGNATURE"),
    ("eyJub3QiOiJhIGpzb24gaGVhZGVy.x.y", "TOKEN_MALFORMED"),
])
def test_every_rpc_refuses_a_bad_token(secured: Secured, method: str, call: Call, allowed: str,
                                       denied: str, outcome: str, token: str, reason: str) -> None:
    with secured.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        call(channel, _metadata(token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status = _status(caught.value)
    assert _reason(status)[0] == reason
    assert token not in status.message and "kid" not in status.message


@pytest.mark.parametrize(("method", "call", "allowed", "denied", "outcome"), RPCS, ids=IDS)
def test_every_rpc_serves_an_allowed_principal(secured: Secured, method: str, call: Call,
                                               allowed: str, denied: str, outcome: str) -> None:
    with secured.channel() as channel:
        response = call(channel, _metadata(secured.tokens[allowed]))
    assert response.ByteSize() > 0


@pytest.mark.parametrize(("method", "call", "allowed", "denied", "outcome"), RPCS, ids=IDS)
def test_every_rpc_denies_or_hides_from_a_denied_principal(
    secured: Secured, method: str, call: Call, allowed: str, denied: str, outcome: str
) -> None:
    with secured.channel() as channel:
        if outcome == "empty":
            response = call(channel, _metadata(secured.tokens[denied]))
            listed = [f for f in response.DESCRIPTOR.fields if f.is_repeated]
            assert all(len(getattr(response, f.name)) == 0 for f in listed), response
            return
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, _metadata(secured.tokens[denied]))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reason, metadata = _reason(_status(caught.value))
    assert reason == "PERMISSION_DENIED"
    assert metadata["principal"] == denied


def test_the_same_principal_from_an_oidc_token(secured: Secured) -> None:
    token = secured.issuer.token("fraud-model")
    with OnlineClient(secured.target, tls=Tls(ca_file=str(secured.ca.ca_file)), token=token) as client:
        result = client.get_online_features(
            feature_service="fraud_model_v1", entities={"user_id": [1], "merchant_id": [1]})
        assert len(result.feature_names) == 20
        with pytest.raises(PermissionDeniedError, match="may not WRITE_ONLINE feature view"):
            client.push("user_transaction_stats", {"user_id": [1]})


@pytest.mark.parametrize(("claims", "reason"), [
    ({"expires_in": -60}, "TOKEN_EXPIRED"),
    ({"issuer": "https://evil.example.com"}, "TOKEN_ISSUER"),
    ({"audience": "someone-else"}, "TOKEN_AUDIENCE"),
    ({"not_before": 120}, "TOKEN_NOT_YET_VALID"),
])
def test_oidc_tokens_that_fail_a_check_are_unauthenticated(
    secured: Secured, claims: dict[str, Any], reason: str
) -> None:
    token = secured.issuer.token("fraud-model", **claims)
    with OnlineClient(secured.target, tls=Tls(ca_file=str(secured.ca.ca_file)), token=token) as client, \
            pytest.raises(UnauthenticatedError) as caught:
        client.get_online_features(feature_service="fraud_model_v1",
                                   entities={"user_id": [1], "merchant_id": [1]})
    assert caught.value.reason == reason


def test_a_token_signed_by_an_unknown_key_is_refused(secured: Secured) -> None:
    from authkit import SigningKey
    from cryptography.hazmat.primitives.asymmetric import rsa

    forger = SigningKey(secured.issuer.keys[-1].kid, rsa.generate_private_key(65537, 2048), "RS256")
    token = secured.issuer.token("fraud-model", key=forger)
    with OnlineClient(secured.target, tls=Tls(ca_file=str(secured.ca.ca_file)), token=token) as client, \
            pytest.raises(UnauthenticatedError) as caught:
        client.get_online_features(feature_service="fraud_model_v1",
                                   entities={"user_id": [1], "merchant_id": [1]})
    assert caught.value.reason == "TOKEN_SIGNATURE"


def test_keys_rotate_by_kid(secured: Secured) -> None:
    issuer = secured.issuer
    tls = Tls(ca_file=str(secured.ca.ca_file))
    old_key = issuer.keys[-1]
    new_key = issuer.rotate()
    fetches = issuer.fetches
    # A token from the new key: its kid is unknown, so the server fetches the JWKS again.
    with OnlineClient(secured.target, tls=tls, token=issuer.token("fraud-model", key=new_key)) as c:
        c.get_online_features(feature_service="fraud_model_v1",
                              entities={"user_id": [2], "merchant_id": [2]})
    assert issuer.fetches == fetches + 1
    # The retired key is gone from the JWKS: a new token signed with it is refused.
    with OnlineClient(secured.target, tls=tls, token=issuer.token("fraud-model", key=old_key)) as c, \
            pytest.raises(UnauthenticatedError, match="signature"):
        c.get_online_features(feature_service="fraud_model_v1",
                              entities={"user_id": [2], "merchant_id": [2]})


def test_verified_tokens_are_cached(secured: Secured) -> None:
    issuer = secured.issuer
    token = issuer.token("fraud-model")
    fetches = issuer.fetches
    with OnlineClient(secured.target, tls=Tls(ca_file=str(secured.ca.ca_file)), token=token) as c:
        for _ in range(20):
            c.get_online_features(feature_service="fraud_model_v1",
                                  entities={"user_id": [3], "merchant_id": [3]})
    assert issuer.fetches == fetches


def test_denials_never_name_what_the_caller_may_not_describe(secured: Secured) -> None:
    tls = Tls(ca_file=str(secured.ca.ca_file))
    entities = {"user_id": [1], "merchant_id": [1]}
    with OnlineClient(secured.target, tls=tls, token=secured.tokens["txn-stats-pipeline"]) as c:
        with pytest.raises(PermissionDeniedError) as caught:
            c.get_online_features(feature_service="fraud_model_v1", entities=entities)
        message = caught.value.message
        assert "fraud_model_v1" in message and "READ_ONLINE" in message
        for hidden in ("user_profile", "merchant_stats", "user_transaction_stats"):
            assert hidden not in message and hidden not in str(caught.value.metadata)
        # A name that does not exist is denied exactly like one that is not allowed.
        with pytest.raises(PermissionDeniedError) as missing:
            c.get_online_features(features=["payroll:salary"], entities=entities)
        with pytest.raises(PermissionDeniedError) as forbidden:
            c.get_online_features(features=["user_profile:age"], entities=entities)
        assert missing.value.message == forbidden.value.message.replace("user_profile:age", "payroll:salary")
    # Someone who may describe everything gets the precise feature, and NOT_FOUND for a typo.
    with OnlineClient(secured.target, tls=tls, token=secured.tokens["alice"]) as c:
        with pytest.raises(PermissionDeniedError, match="feature 'user_transaction_stats:txn_count_1h' of feature service 'fraud_model_v1'"):
            c.get_online_features(feature_service="fraud_model_v1", entities=entities)
        with pytest.raises(NotFoundError):
            c.get_online_features(features=["payroll:salary"], entities=entities)


def test_a_request_is_allowed_only_if_every_feature_is(secured: Secured) -> None:
    tls = Tls(ca_file=str(secured.ca.ca_file))
    with OnlineClient(secured.target, tls=tls, token=secured.tokens["fraud-model"]) as c:
        # Features of fraud_model_v1 however named: allowed.
        c.get_online_features(features=["user_profile:age", "merchant_stats:is_high_risk"],
                              entities={"user_id": [1], "merchant_id": [1]})
        c.get_online_features(feature_service="user_risk", entities={"user_id": [1]})


def test_on_demand_features_are_allowed_by_the_stored_features_they_read(
    secured: Secured,
) -> None:
    tls = Tls(ca_file=str(secured.ca.ca_file))
    lookup = {"features": ["txn_amount_features:amount_to_avg_7d"],
              "entities": {"user_id": [1]}, "request_data": {"amount": [10.0]}}
    # Its input, user_transaction_stats:txn_amount_avg_7d, is a fraud_model_v1 feature.
    with OnlineClient(secured.target, tls=tls, token=secured.tokens["fraud-model"]) as c:
        assert c.get_online_features(**lookup).statuses("amount_to_avg_7d") == ["PRESENT"]
    with OnlineClient(secured.target, tls=tls, token=secured.tokens["txn-stats-pipeline"]) as c, \
            pytest.raises(PermissionDeniedError):
        c.get_online_features(**lookup)


def test_health_needs_no_token_but_reflection_does(secured: Secured) -> None:
    with secured.channel() as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(stub.ServerReflectionInfo(
            iter([request]), timeout=5, metadata=_metadata(secured.tokens["mallory"])))
        names = {s.name for s in answers[0].list_services_response.service}
        assert "quiver.serving.v1.FeatureServingService" in names


def test_plaintext_clients_cannot_connect(secured: Secured) -> None:
    with grpc.insecure_channel(secured.target) as channel, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_writes_deletes_and_denials_leave_one_audit_line_each(secured: Secured) -> None:
    tls = Tls(ca_file=str(secured.ca.ca_file))
    with structlog.testing.capture_logs() as logs:
        with OnlineClient(secured.target, tls=tls, token=secured.tokens["txn-stats-pipeline"]) as c:
            c.push("user_transaction_stats", pa.ipc.open_stream(_push_request().arrow_ipc).read_all(),
                   to="online_and_offline")
            with pytest.raises(PermissionDeniedError):
                c.delete_entities({"user_id": [5]})
        with OnlineClient(secured.target, tls=tls, token=secured.tokens["privacy-officer"]) as c:
            c.delete_entities({"user_id": [6]})
        with OnlineClient(secured.target, tls=tls) as c, pytest.raises(UnauthenticatedError):
            c.delete_entities({"user_id": [7]})
        with OnlineClient(secured.target, tls=tls, token=secured.tokens["fraud-model"]) as c:
            c.get_online_features(feature_service="fraud_model_v1",
                                  entities={"user_id": [1], "merchant_id": [1]})
    audit = [entry for entry in logs if entry["event"] == "audit"]
    assert [(a["principal"], a["method"], a["outcome"], a["status"]) for a in audit] == [
        ("txn-stats-pipeline", "PushFeatures", "allowed", "OK"),
        ("txn-stats-pipeline", "DeleteEntities", "denied", "PERMISSION_DENIED"),
        ("privacy-officer", "DeleteEntities", "allowed", "OK"),
        (None, "DeleteEntities", "unauthenticated", "UNAUTHENTICATED"),
    ]
    push = audit[0]
    assert push["action"] == "WRITE_ONLINE+WRITE_OFFLINE"
    assert push["resources"] == ["feature_view:user_transaction_stats"]
    assert audit[2]["resources"] and all(r.startswith("feature_view:") for r in audit[2]["resources"])


def test_the_served_project_is_named_only_to_who_may_describe_it(secured: Secured) -> None:
    with secured.channel() as channel:
        stub = reg_grpc.RegistryServiceStub(channel)
        # Who may describe nothing gets the same (empty) answer for any project name,
        # so it cannot guess the served one.
        for project in ("payroll", "fraud_detection"):
            listed = stub.ListFeatureViews(reg.ListFeatureViewsRequest(project=project),
                                           metadata=_metadata(secured.tokens["mallory"]), timeout=10)
            assert len(listed.feature_views) == 0
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListFeatureViews(reg.ListFeatureViewsRequest(project="payroll"),
                                  metadata=_metadata(secured.tokens["alice"]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "fraud_detection" in caught.value.details()


def test_a_missing_entity_is_not_found_for_who_may_describe_the_project(secured: Secured) -> None:
    with secured.channel() as channel:
        stub = reg_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetEntity(reg.GetEntityRequest(name="usr"),
                           metadata=_metadata(secured.tokens["alice"]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetEntity(reg.GetEntityRequest(name="usr"),
                           metadata=_metadata(secured.tokens["mallory"]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_offline_erasure_records_the_authenticated_principal(secured: Secured) -> None:
    import json

    request = pb.DeleteEntitiesRequest(entities={"user_id": _values([17])}, offline=True)
    with secured.channel() as channel:
        reply = _serving("DeleteEntities", request)(channel, _metadata(secured.tokens["privacy-officer"]))
    log = load_config(secured.repo, env={}).registry_path / "governance" / "erasures" / "log.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [r for r in lines if r["erasure_id"] == reply.erasure_id]
    assert {r["event"] for r in mine} >= {"requested", "completed"}
    assert all(r.get("by", "privacy-officer") == "privacy-officer" for r in mine)
