"""The chart's TLS and authentication: what it mounts and renders, what it refuses, and the
serving and Flight containers run for real with a TLS Secret and a tokens Secret."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver_server.config import QuiverConfig

from .helmkit import CHART_DIR, NAMESPACE, RELEASE, VALUE_SETS, env_of, render

QUIVER = Path(sys.executable).parent / "quiver"
STATIC = VALUE_SETS["auth-static"]
OIDC = VALUE_SETS["auth-oidc"]


def _container(out: Any, component: str) -> tuple[dict[str, Any], dict[str, Any]]:
    _, pod = out.workload(component)
    return pod["containers"][0], pod


def test_static_tokens_and_tls_are_mounted_into_the_servers_only() -> None:
    out = render(STATIC)
    config = out.quiver_yaml()
    tls = {"cert_file": "/etc/quiver/tls/tls.crt", "key_file": "/etc/quiver/tls/tls.key",
           "client_ca_file": "/etc/quiver/tls/client-ca.crt", "reload_check_seconds": 10}
    assert config["serving"]["tls"] == tls and config["flight"]["tls"] == tls
    assert config["auth"] == {"enabled": True, "cache_seconds": 60, "mtls": {"enabled": True},
                              "static": {"tokens_file": "/etc/quiver/auth/tokens.yaml"}}
    QuiverConfig.model_validate({**config, "repo_path": "/"})
    for component in ("serving", "flight"):
        container, pod = _container(out, component)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "quiver-tls"
        assert [i["path"] for i in volumes["tls"]["secret"]["items"]] == [
            "tls.crt", "tls.key", "client-ca.crt"]
        (source,) = volumes["auth"]["projected"]["sources"]
        assert source["secret"] == {"name": "quiver-tokens",
                                    "items": [{"key": "tokens.yaml", "path": "tokens.yaml"}]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["tls"]["readOnly"] and mounts["auth"]["mountPath"] == "/etc/quiver/auth"
    for component in ("apply", "materialize"):
        _, pod = out.workload(component)
        assert not {"tls", "auth"} & {v["name"] for v in pod["volumes"]}, component


def test_oidc_settings_and_the_cluster_ca() -> None:
    out = render(OIDC)
    auth = out.quiver_yaml()["auth"]
    assert auth["oidc"] == {
        "issuer": "https://kubernetes.default.svc.cluster.local", "audience": "quiver",
        "jwks_url": "https://kubernetes.default.svc/openid/v1/jwks",
        "ca_file": "/etc/quiver/auth/oidc-ca.crt", "principal_claim": "sub",
        "groups_claim": "groups", "leeway_seconds": 30,
    }
    _, pod = _container(out, "serving")
    (source,) = next(v for v in pod["volumes"] if v["name"] == "auth")["projected"]["sources"]
    assert source["configMap"]["name"] == "kube-root-ca.crt"


def test_network_policy_is_on_by_default() -> None:
    out = render()
    policy = out.get("NetworkPolicy", f"{out.fullname}-serving")
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {6566, 6567, 9464}


@pytest.mark.parametrize(("values", "message"), [
    ({"auth": {"mode": "static"}}, "at '/auth/static/existingSecret'"),
    ({"auth": {"mode": "oidc", "oidc": {"audience": "q"}}}, "at '/auth/oidc/issuer'"),
    ({"auth": {"mode": "ldap"}}, "at '/auth/mode'"),
    ({"tls": {"enabled": True}}, "at '/tls/existingSecret'"),
])
def test_incomplete_auth_values_fail_with_the_schema_message(values: dict[str, Any], message: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError) as failure:
        helm.Chart.load(CHART_DIR).render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(failure.value)


@pytest.mark.parametrize(("values", "message"), [
    ({"tls": {"enabled": True, "existingSecret": "t"}, "serving": {"healthPort": 0}},
     "kubelet's gRPC probes cannot reach the TLS port"),
    ({"auth": {"mode": "static", "static": {"existingSecret": "s"}, "mtls": {"enabled": True}}},
     "set tls.enabled and tls.clientCaKey"),
    ({"serving": {"healthPort": 6566}}, "serving.healthPort (6566) must differ"),
])
def test_auth_mistakes_across_values_fail_with_a_message(values: dict[str, Any], message: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        helm.Chart.load(CHART_DIR).render(values, name=RELEASE, namespace=NAMESPACE)


# ---- the containers, run for real -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(container: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIVER_", "OTEL_"))}
    env.update({name: e["value"] for name, e in env_of(container).items() if "value" in e})
    return env


@pytest.mark.slow
def test_the_chart_serves_tls_and_tokens(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
    from authkit import CertificateAuthority, write_tokens

    from quiver import OnlineClient, Tls, TrainingClient
    from quiver.errors import UnauthenticatedError
    from quiver_server.demo_repo import DEFINITIONS, PERMISSIONS, write_demo_repo

    repo, data, tls_dir, auth_dir = (tmp_path / d for d in ("repo", "volume", "tls", "auth"))
    port, health_port, flight_port = _free_port(), _free_port(), _free_port()
    out = render({
        "project": "fraud_detection",
        "onlineStore": {"type": "sqlite"},
        "serving": {"replicaCount": 1, "port": port, "healthPort": health_port},
        "flight": {"port": flight_port},
        "telemetry": {"metrics": {"enabled": False}},
        "persistence": {"mountPath": str(data)},
        "featureRepo": {"mountPath": str(repo),
                        "files": {"features.py": DEFINITIONS, "permissions.py": PERMISSIONS}},
        "tls": {"enabled": True, "existingSecret": "quiver-tls", "mountPath": str(tls_dir)},
        "auth": {"mode": "static", "static": {"existingSecret": "quiver-tokens"},
                 "mountPath": str(auth_dir)},
    })
    # What kubelet does: ConfigMap keys and Secret items become files.
    repo.mkdir()
    for name, content in out.get("ConfigMap", f"{out.fullname}-config")["data"].items():
        (repo / name).write_text(content)
    demo = write_demo_repo(tmp_path / "demo", users=10, merchants=3, days=1)
    data.mkdir()
    os.replace(demo / "data", data / "offline")
    ca = CertificateAuthority(tmp_path / "pki")
    cert, key = ca.issue("server")
    tls_dir.mkdir()
    os.replace(cert, tls_dir / "tls.crt")
    os.replace(key, tls_dir / "tls.key")
    auth_dir.mkdir()
    tokens = write_tokens(auth_dir / "tokens.yaml", {"fraud-model": [], "alice": ["data-scientists"]})
    apply_container, _ = _container(out, "apply")
    applied = subprocess.run([str(QUIVER), *apply_container["args"]], env=_env(apply_container),
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stderr

    processes = []
    logs = []
    try:
        for component in ("serving", "flight"):
            container, _ = _container(out, component)
            logs.append((tmp_path / f"{component}.log").open("w"))
            processes.append((component, subprocess.Popen(
                [str(QUIVER), *container["args"]], env=_env(container), cwd=tmp_path,
                stdout=logs[-1], stderr=subprocess.STDOUT)))
        serving, _ = _container(out, "serving")
        probe = serving["readinessProbe"]["grpc"]
        assert probe["port"] == health_port
        deadline, status = time.monotonic() + 60, -1
        while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.SERVING:
            assert all(p.poll() is None for _, p in processes), (tmp_path / "serving.log").read_text()
            with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=probe["service"]), timeout=1).status
                except grpc.RpcError:
                    time.sleep(0.2)
        assert status == health_pb2.HealthCheckResponse.SERVING
        client_tls = Tls(ca_file=str(ca.ca_file))
        entities = {"user_id": [1], "merchant_id": [1]}
        with OnlineClient(f"localhost:{port}", tls=client_tls, token=tokens["fraud-model"]) as client:
            result = client.get_online_features(feature_service="fraud_model_v1", entities=entities)
            assert len(result.feature_names) == 20
        with OnlineClient(f"localhost:{port}", tls=client_tls) as client, \
                pytest.raises(UnauthenticatedError):
            client.get_online_features(feature_service="fraud_model_v1", entities=entities)
        now = datetime.now(UTC)
        spine = pa.table({"user_id": pa.array([1], pa.int64()),
                          "event_timestamp": pa.array([now - timedelta(hours=1)],
                                                      pa.timestamp("us", tz="UTC"))})
        deadline = time.monotonic() + 60
        with TrainingClient(f"grpc+tls://localhost:{flight_port}", tls=client_tls,
                            token=tokens["alice"]) as training:
            while True:
                try:
                    schema = training.get_schema(features=["user_profile:age"])
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert "age" in schema.names
            assert training.get_training_set(spine, features=["user_profile:age"]).num_rows == 1
        assert "AUTHENTICATION IS OFF" not in (tmp_path / "serving.log").read_text()
    finally:
        for _, process in processes:
            process.send_signal(signal.SIGTERM)
        for component, process in processes:
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            assert process.returncode == 0, (tmp_path / f"{component}.log").read_text()
        for log in logs:
            log.close()


def test_documented_values_files_are_yaml() -> None:
    for name in ("auth-static-values.yaml", "auth-oidc-values.yaml"):
        assert yaml.safe_load((CHART_DIR / "ci" / name).read_text())
