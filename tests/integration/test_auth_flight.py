"""Access control on the Flight server, with the same repo, principals and policy as the
gRPC tests: every Flight method tried with no token, a bad token, an allowed and a denied
principal, over real TLS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from pyarrow import flight

from quiver import OfflineSpine, Tls, TrainingClient
from quiver.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError
from quiver.flight.v1 import flight_pb2 as fpb
from quiver_flight.server import create_flight_server
from quiver_server.config import load_config
from quiver_server.demo_repo import write_demo_repo
from quiver_server.repo import apply

PRINCIPALS = {"fraud-model": [], "alice": ["data-scientists"], "mallory": [],
              "trainer": ["data-scientists"]}
ANALYSTS = '''
from quiver import Action, Permission, Resource

analysts = Permission(name="analysts", groups=["analysts"], actions=[Action.READ_OFFLINE],
                      resources=[Resource.feature_view("user_profile")])
# Fitting stores parameters in the registry: a project-wide write.
trainers = Permission(name="trainers", principals=["trainer"], actions=[Action.WRITE_OFFLINE],
                      resources=[Resource.project()])
'''


@dataclass
class SecuredFlight:
    location: str
    tokens: dict[str, str]
    ca: CertificateAuthority
    issuer: OidcIssuer
    repo: Path

    def client(self, token: str | None) -> TrainingClient:
        return TrainingClient(self.location, tls=Tls(ca_file=str(self.ca.ca_file)), token=token)

    def raw(self) -> flight.FlightClient:
        return flight.FlightClient(self.location, tls_root_certs=self.ca.pem)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredFlight]:
    base = tmp_path_factory.mktemp("flight")
    repo = write_demo_repo(base / "repo", users=20, merchants=5, days=2)
    (repo / "analysts.py").write_text(ANALYSTS)
    ca = CertificateAuthority(base / "pki")
    tokens = write_tokens(base / "tokens.yaml", PRINCIPALS)
    with oidc_issuer() as issuer:
        write_settings(repo, auth_settings(repo, oidc=issuer, tokens_file=base / "tokens.yaml",
                                           tls_dir=base / "pki", ca=ca))
        config = load_config(repo, env={})
        apply(config)
        server, port = create_flight_server(config, "grpc://127.0.0.1:0")
        try:
            yield SecuredFlight(f"grpc+tls://localhost:{port}", tokens, ca, issuer, repo)
        finally:
            server.shutdown()


def _spine() -> pa.Table:
    now = datetime.now(UTC)
    return pa.table({
        "user_id": pa.array([1, 2, 3], pa.int64()),
        "merchant_id": pa.array([1, 2, 3], pa.int64()),
        "event_timestamp": pa.array([now - timedelta(hours=h) for h in (1, 2, 3)],
                                    pa.timestamp("us", tz="UTC")),
    })


def _options(token: str | None) -> flight.FlightCallOptions:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    return flight.FlightCallOptions(headers=headers, timeout=30)


def _command(**fields: Any) -> flight.FlightDescriptor:
    from quiver.convert import pack

    return flight.FlightDescriptor.for_command(pack(fpb.TrainingSetCommand(**fields)))


def _ticket(secured: SecuredFlight) -> flight.Ticket:
    with secured.client(secured.tokens["alice"]) as client:
        info = client.plan(_spine(), feature_service="fraud_model_v1")
    return info.endpoints[0].ticket


def _upload(client: flight.FlightClient, options: flight.FlightCallOptions) -> None:
    from quiver.convert import pack

    spine = _spine()
    descriptor = flight.FlightDescriptor.for_command(pack(fpb.UploadSpineCommand()))
    writer, reader = client.do_put(descriptor, spine.schema, options)
    writer.write_table(spine)
    writer.done_writing()
    reader.read()
    writer.close()


Method = Callable[[SecuredFlight, flight.FlightClient, flight.FlightCallOptions], Any]

METHODS: dict[str, Method] = {
    "do_put": lambda s, c, o: _upload(c, o),
    "get_flight_info": lambda s, c, o: c.get_flight_info(
        _command(feature_service="fraud_model_v1",
                 spine=fpb.SpineSource(spine_id="0" * 32)), o),
    "get_schema": lambda s, c, o: c.get_schema(_command(feature_service="fraud_model_v1"), o),
    "do_get": lambda s, c, o: c.do_get(_ticket(s), o).read_all(),
    "list_flights": lambda s, c, o: list(c.list_flights(b"", o)),
    "list_actions": lambda s, c, o: list(c.list_actions(o)),
}


# pyarrow 26 reduces the status of a refused get_schema to text (an OSError when the
# middleware refused it, an ArrowException when its handler did); other methods keep both.
REFUSED = (flight.FlightError, pa.ArrowException, OSError)


def _status(error: BaseException) -> tuple[int, str, dict[str, str]]:
    from quiver.status import flight_error_code

    extra = getattr(error, "extra_info", None)
    if not extra:
        return flight_error_code(error).value[0], "", {}
    status = status_pb2.Status.FromString(extra)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return status.code, info.reason, dict(info.metadata)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_refuses_a_call_without_a_token(secured: SecuredFlight, method: str) -> None:
    with pytest.raises(REFUSED) as caught:
        METHODS[method](secured, secured.raw(), _options(None))
    code, reason, _ = _status(caught.value)
    assert code == 16
    if method != "get_schema":
        assert isinstance(caught.value, flight.FlightUnauthenticatedError)
        assert reason == "CREDENTIALS_MISSING"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize(("token", "reason"), [
    ("qvr_nobody-was-given-this", "TOKEN_UNKNOWN"),
    ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "TOKEN_SIGNATURE"),
])
def test_every_method_refuses_a_bad_token(secured: SecuredFlight, method: str, token: str,
                                          reason: str) -> None:
    with pytest.raises(REFUSED) as caught:
        METHODS[method](secured, secured.raw(), _options(token))
    code, got, _ = _status(caught.value)
    assert code == 16
    if method != "get_schema":
        assert isinstance(caught.value, flight.FlightUnauthenticatedError)
        assert got == reason


def test_every_method_serves_an_allowed_principal(secured: SecuredFlight) -> None:
    options = _options(secured.tokens["alice"])
    client = secured.raw()
    _upload(client, options)
    assert METHODS["get_schema"](secured, client, options).schema.names[:2] == ["user_id", "merchant_id"]
    assert METHODS["do_get"](secured, client, options).num_rows == 3
    assert len(METHODS["list_flights"](secured, client, options)) == 6
    METHODS["list_actions"](secured, client, options)
    with secured.client(secured.tokens["alice"]) as training:
        table = training.get_training_set(_spine(), feature_service="fraud_model_v1")
    assert table.num_rows == 3 and "txn_count_24h" in table.column_names


@pytest.mark.parametrize("method", ["do_put", "get_flight_info", "get_schema", "do_get"])
def test_every_method_denies_a_denied_principal(secured: SecuredFlight, method: str) -> None:
    # fraud-model may read fraud_model_v1 online, not offline.
    with pytest.raises(REFUSED) as caught:
        METHODS[method](secured, secured.raw(), _options(secured.tokens["fraud-model"]))
    code, reason, metadata = _status(caught.value)
    assert code == 7
    if method == "get_schema":
        # pyarrow's client keeps only the text here; the status travels in the trailer.
        assert "may not READ_OFFLINE" in str(caught.value)
        return
    assert isinstance(caught.value, flight.FlightUnauthorizedError)
    assert (reason, metadata["principal"]) == ("PERMISSION_DENIED", "fraud-model")
    assert metadata["action"] == "READ_OFFLINE"


def test_list_flights_shows_only_what_the_caller_may_describe(secured: SecuredFlight) -> None:
    with secured.client(secured.tokens["mallory"]) as client:
        assert client.list_feature_sets() == []
    with secured.client(secured.issuer.token("bob", ["data-scientists"])) as client:
        names = sorted(info.name for info, _ in client.list_feature_sets())
    assert names == ["fraud_model_scaled", "fraud_model_v1", "merchant_stats", "user_profile",
                     "user_risk", "user_transaction_stats"]


def test_training_client_raises_typed_errors(secured: SecuredFlight) -> None:
    with secured.client(None) as client, pytest.raises(UnauthenticatedError):
        client.get_schema(feature_service="fraud_model_v1")
    spine = OfflineSpine("nowhere")
    with secured.client(secured.tokens["fraud-model"]) as client, \
            pytest.raises(PermissionDeniedError, match="READ_OFFLINE every feature of feature service 'fraud_model_v1'"):
        client.plan(spine, feature_service="fraud_model_v1")
    with secured.client(secured.tokens["alice"]) as client, pytest.raises(NotFoundError):
        client.plan(spine, features=["payroll:salary"])
    with secured.client(secured.tokens["mallory"]) as client, pytest.raises(PermissionDeniedError):
        client.plan(spine, features=["payroll:salary"])


def test_a_stolen_ticket_does_not_serve_another_principal(secured: SecuredFlight) -> None:
    ticket = _ticket(secured)
    with pytest.raises(flight.FlightUnauthorizedError):
        secured.raw().do_get(ticket, _options(secured.tokens["fraud-model"])).read_all()


def test_parquet_path_spines_need_read_offline_on_the_whole_project(secured: SecuredFlight) -> None:
    # Whatever is in the spine directory comes back with the features, columns unchanged.
    import pyarrow.parquet as pq

    eve = secured.issuer.token("eve", ["analysts"])  # READ_OFFLINE on user_profile only
    with secured.client(eve) as client:
        client.get_training_set(_spine(), features=["user_profile:age"])
    # Someone else's labelled events, in the spine directory of the offline store.
    spines = secured.repo / "data" / "spines"
    spines.mkdir(parents=True, exist_ok=True)
    pq.write_table(_spine(), spines / "fraud_labels.parquet")
    with secured.client(secured.tokens["alice"]) as client:
        client.plan(OfflineSpine("fraud_labels.parquet"), features=["user_profile:age"])
    with secured.client(eve) as client, pytest.raises(PermissionDeniedError, match="parquet_path"):
        client.plan(OfflineSpine("fraud_labels.parquet"), features=["user_profile:age"])


def test_spine_uploads_and_denials_are_audited(secured: SecuredFlight) -> None:
    with structlog.testing.capture_logs() as logs:
        with secured.client(secured.tokens["alice"]) as client:
            handle = client.upload_spine(_spine())
        with secured.client(secured.tokens["fraud-model"]) as client, pytest.raises(PermissionDeniedError):
            client.upload_spine(_spine())
    audit = [e for e in logs if e["event"] == "audit"]
    assert [(a["principal"], a["method"], a["outcome"], a["transport"]) for a in audit] == [
        ("alice", "DoPut", "allowed", "flight"),
        ("fraud-model", "DoPut", "denied", "flight"),
    ]
    assert audit[0]["resources"] == [f"spine:{handle.spine_id}"]


def test_one_policy_module_answers_for_both_paths(secured: SecuredFlight) -> None:
    """The checks both servers call, asked directly: READ_ONLINE is not READ_OFFLINE."""
    from quiver import Action
    from quiver_server.auth.access import AccessControl
    from quiver_server.auth.principal import CallAccess, Principal, enter_call, exit_call
    from quiver_server.registry.store import RegistryStore

    snapshot = RegistryStore(load_config(secured.repo, env={}).registry_path).latest()
    refs = snapshot.resolve(feature_service="fraud_model_v1")
    access = AccessControl(enabled=True)
    for principal, online, offline in [("fraud-model", True, False), ("alice", False, True)]:
        who = Principal(principal, frozenset(PRINCIPALS[principal]), "static")
        token = enter_call(CallAccess(who, "test", "test"))
        try:
            for action, expected in ((Action.READ_ONLINE, online), (Action.READ_OFFLINE, offline)):
                try:
                    access.check_features(snapshot, action, refs, service="fraud_model_v1")
                    allowed = True
                except PermissionDeniedError:
                    allowed = False
                assert allowed is expected, (principal, action)
        finally:
            exit_call(token)


def test_fitting_needs_a_project_wide_write_and_records_the_principal(
    secured: SecuredFlight,
) -> None:
    spine = _spine().append_column("amount", pa.array([10.0, 20.0, 30.0]))
    # alice may read every feature offline, but not write the registry.
    with secured.client(secured.tokens["alice"]) as client, \
            pytest.raises(PermissionDeniedError, match="WRITE_OFFLINE"):
        client.get_training_set(spine, feature_service="fraud_model_scaled", fit=True)
    with secured.client(secured.tokens["trainer"]) as client:
        table = client.get_training_set(spine, feature_service="fraud_model_scaled", fit=True)
    assert table.schema.metadata[b"quiver.transform_version"] == b"1"
    from quiver_server.registry.store import RegistryStore

    store = RegistryStore(load_config(secured.repo, env={}).registry_path)
    [fitted] = store.latest().proto.transform_parameters
    assert (fitted.fitted_by, fitted.fitted_via) == ("trainer", "flight")


def test_a_ticket_follows_permissions_revoked_after_it_was_planned(tmp_path: Path) -> None:
    """Tickets pin the registry version of their data, not of their permissions: once a
    newer version revokes READ_OFFLINE, a ticket planned before is refused."""
    repo = write_demo_repo(tmp_path / "repo", users=20, merchants=5, days=2)
    (repo / "analysts.py").write_text(ANALYSTS)
    tokens = write_tokens(tmp_path / "tokens.yaml", {"eve": ["analysts"]})
    write_settings(repo, {"auth": {"enabled": True,
                                   "static": {"tokens_file": str(tmp_path / "tokens.yaml")}}})
    config = load_config(repo, env={})
    apply(config)
    server, port = create_flight_server(config, "grpc://127.0.0.1:0")
    try:
        location = f"grpc://127.0.0.1:{port}"
        with TrainingClient(location, token=tokens["eve"]) as client:
            info = client.plan(_spine(), features=["user_profile:age"])
        ticket = info.endpoints[0].ticket
        client = flight.FlightClient(location)
        assert client.do_get(ticket, _options(tokens["eve"])).read_all().num_rows == 3
        # The analysts lose user_profile: a new registry version without their grant.
        (repo / "analysts.py").write_text(ANALYSTS.replace(
            'Resource.feature_view("user_profile")', 'Resource.feature_view("merchant_stats")'))
        apply(config)
        with pytest.raises(flight.FlightUnauthorizedError) as caught:
            client.do_get(ticket, _options(tokens["eve"])).read_all()
        _, reason, metadata = _status(caught.value)
        assert (reason, metadata["principal"]) == ("PERMISSION_DENIED", "eve")
        assert metadata["feature"] == "user_profile:age"
    finally:
        server.shutdown()


def test_training_datasets_need_read_offline_and_are_hidden_from_who_may_not_describe_them(
    secured: SecuredFlight,
) -> None:
    from quiver._training_client import DatasetSpine

    with secured.client(secured.tokens["alice"]) as client:
        created = client.create_training_dataset("fraud_auth", _spine(), feature_service="fraud_model_v1")
        assert created.record.created_by == "alice"
        assert client.get_training_dataset("fraud_auth").table.equals(created.table)
    # fraud-model may read the service online only: it may not create one.
    with secured.client(secured.tokens["fraud-model"]) as client, \
            pytest.raises(PermissionDeniedError, match="READ_OFFLINE"):
        client.create_training_dataset("mine", _spine(), feature_service="fraud_model_v1")
    # Who may not describe every view a dataset reads is told it does not exist, as by
    # RegistryService: not that it exists, nor which service it was made from.
    for principal in ("fraud-model", "mallory"):
        with secured.client(secured.tokens[principal]) as client:
            for name in ("fraud_auth", "no_such_dataset"):
                with pytest.raises(NotFoundError) as caught:
                    client.get_training_dataset(name)
                assert caught.value.message == f"training dataset {name!r} does not exist"
                with pytest.raises(NotFoundError) as versioned:
                    client.get_training_dataset(name, 7)
                assert versioned.value.message == f"training dataset {name!r} does not exist"
            answers = []
            for name in ("fraud_auth", "no_such_dataset"):
                with pytest.raises((NotFoundError, PermissionDeniedError)) as reused:
                    client.get_training_set(DatasetSpine(name), features=["user_profile:age"])
                answers.append((type(reused.value), reused.value.message.replace(name, "NAME")))
            assert answers[0] == answers[1]
