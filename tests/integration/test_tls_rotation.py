"""TLS on both servers: certificates rotated in place are picked up, a broken rotation is
not; client certificates name principals on gRPC; probes get a plaintext health port.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
import structlog
from authkit import CertificateAuthority, serial_of, write_settings, write_tokens
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver import OnlineClient, Tls, TrainingClient
from quiver.errors import PermissionDeniedError, UnavailableError
from quiver_flight.server import create_flight_server
from quiver_server.config import QuiverConfig, load_config
from quiver_server.demo_repo import write_demo_repo
from quiver_server.repo import apply
from quiver_server.serving.server import create_server


def _serial(port: int, ca: CertificateAuthority) -> int:
    """The serial number of the certificate a new TLS connection to `port` is shown."""
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return int(x509.load_der_x509_certificate(der).serial_number)


def _eventually(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll `condition`; a refused or dropped connection (a Flight server between two
    binds, its old listener closing) is a no."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return condition()


def _rotate(ca: CertificateAuthority, cert: Path, key: Path, name: str) -> int:
    """Replace the files in place the way a Secret volume does (write aside, rename over)."""
    new_cert, new_key = ca.issue(name)
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    return serial_of(cert.read_bytes())


def _repo(tmp_path: Path, ca: CertificateAuthority, *, mtls: bool = False,
          health_port: int | None = None, flight: dict[str, object] | None = None,
          ) -> tuple[QuiverConfig, Path, Path]:
    repo = write_demo_repo(tmp_path / "repo", users=10, merchants=3, days=1)
    cert, key = ca.issue("server")
    tls = {"cert_file": str(cert), "key_file": str(key), "reload_check_seconds": 0.05}
    if mtls:
        tls["client_ca_file"] = str(ca.ca_file)
    tokens = write_tokens(tmp_path / "tokens.yaml", {"nobody": []})
    assert tokens
    serving: dict[str, object] = {"tls": tls}
    if health_port is not None:
        serving["health_port"] = health_port
    auth: dict[str, object] = {"enabled": True, "static": {"tokens_file": str(tmp_path / "tokens.yaml")}}
    if mtls:
        auth["mtls"] = {"enabled": True}
    write_settings(repo, {"serving": serving, "flight": {"tls": tls, **(flight or {})}, "auth": auth})
    config = load_config(repo, env={})
    apply(config)
    return config, cert, key


def test_grpc_picks_up_a_rotated_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    config, cert, key = _repo(tmp_path, ca)
    app, port = create_server(config, "127.0.0.1", 0)
    with app:
        first = _serial(port, ca)
        assert first == serial_of(cert.read_bytes())
        second = _rotate(ca, cert, key, "server-2")
        assert _eventually(lambda: _serial(port, ca) == second)
        # A half-done rotation (a key that does not match) is not served: the last good one is.
        other_cert, _ = ca.issue("server-3")
        os.replace(other_cert, cert)
        time.sleep(0.3)  # several reload checks; nothing must change
        assert _serial(port, ca) == second


def test_flight_picks_up_a_rotated_certificate_without_cutting_streams(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    # Small batches, so the stream is still being sent (held by flow control) at the rotation.
    config, cert, key = _repo(tmp_path, ca, flight={"batch_rows": 1000})
    tokens = write_tokens(tmp_path / "tokens.yaml", {"alice": ["data-scientists"]})
    server, port = create_flight_server(config, "grpc://127.0.0.1:0")
    rows = 400_000
    reader = None
    try:
        first = _serial(port, ca)
        location = f"grpc+tls://localhost:{port}"
        now = datetime.now(UTC)
        spine = pa.table({
            "user_id": pa.array([i % 10 + 1 for i in range(rows)], pa.int64()),
            "event_timestamp": pa.array([now - timedelta(seconds=i % 86_400) for i in range(rows)],
                                        pa.timestamp("us", tz="UTC")),
        })
        with TrainingClient(location, tls=Tls(ca_file=str(ca.ca_file)), token=tokens["alice"]) as client, \
                structlog.testing.capture_logs() as logs:
            info = client.plan(spine, features=["user_profile:age"], partition_rows=rows)
            reader = client._client.do_get(info.endpoints[0].ticket, client._options)
            first_chunk = reader.read_chunk()
            second = _rotate(ca, cert, key, "server-2")
            assert _eventually(lambda: _serial(port, ca) == second)
            assert second != first
            # The stream opened before the rotation runs to its end on the old server ...
            received = first_chunk.data.num_rows + reader.read_all().num_rows
            assert received == rows
            events = [e["event"] for e in logs if e.get("method") in (None, "DoGet")]
            assert events.index("flight server rebuilt with the new certificate") < events.index("rpc")
            # ... and the same client carries on against the new one.
            table = client.get_training_set(spine.slice(0, 10), features=["user_profile:age"])
            assert table.num_rows == 10
    finally:
        if reader is not None:
            reader.cancel()  # a stream left unread would hold the old server open
        server.shutdown()


def test_client_certificates_name_principals_on_grpc(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    config, _, _ = _repo(tmp_path, ca, mtls=True)
    model_cert, model_key = ca.issue("fraud-model", server=False)
    bob_cert, bob_key = ca.issue("bob", server=False, units=("data-scientists",))
    stranger_cert, stranger_key = ca.issue("stranger", server=False)
    app, port = create_server(config, "127.0.0.1", 0)
    target = f"localhost:{port}"
    entities = {"user_id": [1], "merchant_id": [1]}
    with app:
        with OnlineClient(target, tls=Tls(str(ca.ca_file), str(model_cert), str(model_key))) as c:
            assert len(c.get_online_features(feature_service="fraud_model_v1",
                                             entities=entities).feature_names) == 20
        with OnlineClient(target, tls=Tls(str(ca.ca_file), str(stranger_cert), str(stranger_key))) as c, \
                pytest.raises(PermissionDeniedError, match="'stranger'"):
            c.get_online_features(feature_service="fraud_model_v1", entities=entities)
        # Groups come from the certificate's organizational units.
        from quiver.registry.v1 import registry_service_pb2 as reg
        from quiver.registry.v1 import registry_service_pb2_grpc as reg_grpc

        credentials = grpc.ssl_channel_credentials(ca.pem, bob_key.read_bytes(), bob_cert.read_bytes())
        with grpc.secure_channel(target, credentials) as channel:
            views = reg_grpc.RegistryServiceStub(channel).ListFeatureViews(
                reg.ListFeatureViewsRequest(), timeout=10)
        assert len(views.feature_views) == 3
        # Without a client certificate the handshake itself fails.
        with OnlineClient(target, tls=Tls(str(ca.ca_file))) as c, pytest.raises(UnavailableError):
            c.get_online_features(feature_service="fraud_model_v1", entities=entities, timeout=5)


def test_probes_reach_a_plaintext_health_port(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        health_port = sock.getsockname()[1]
    config, _, _ = _repo(tmp_path, ca, health_port=health_port)
    app, port = create_server(config, "127.0.0.1", 0)
    with app, grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        service = "quiver.serving.v1.FeatureServingService"
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # Only health lives there.
        from quiver.serving.v1 import serving_service_pb2 as pb
        from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc

        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.FeatureServingServiceStub(channel).GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(feature_service="fraud_model_v1"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
