"""The Helm chart, rendered by Helm's own engine and checked the way a cluster would check it.

Every ci/*-values.yaml file and a few focused combinations are rendered; each result must pass
Helm lint, validate against the Kubernetes API schemas (kubernetes-validate, strict: unknown
fields fail), produce a quiver.yaml that Quiver's own config model accepts, and keep the
invariants platform teams rely on (gRPC probes, hardened containers, no inlined secrets).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from quiver_server.config import load_config

from .helmkit import (
    CHART_DIR,
    CI_VALUES,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    Rendered,
    chart_defaults,
    containers,
    deep_merge,
    env_of,
    load_values,
    render,
)

FULL = f"{RELEASE}-quiver"
HEALTH_SERVICE = "quiver.serving.v1.FeatureServingService"
BAD_VALUES_DIR = Path(__file__).parent / "bad-values"


# ---- Helm: lint and render ---------------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "quiver"
    assert chart["kubeVersion"] == ">=1.27.0-0", "gRPC probes and CronJob timeZone need 1.27"
    project = (CHART_DIR.parents[2] / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', project, re.M)
    assert version is not None
    assert chart["appVersion"] == version.group(1), "appVersion follows the package version"


def test_ci_values_include_everything_on() -> None:
    names = {path.name for path in CI_VALUES}
    assert {"default-values.yaml", "full-values.yaml"} <= names
    full = load_values(CHART_DIR / "ci" / "full-values.yaml")
    assert full["aerospike"]["tls"]["enabled"]
    assert full["telemetry"]["tracing"]["enabled"]
    assert full["serving"]["autoscaling"]["enabled"] and full["flight"]["autoscaling"]["enabled"]
    assert full["serving"]["pdb"]["enabled"] and full["flight"]["pdb"]["enabled"]
    assert full["networkPolicy"]["enabled"] and full["networkPolicy"]["egress"]["restrict"]
    assert full["serviceMonitor"]["enabled"]
    assert chart_defaults()["materialize"]["enabled"], "the CronJob is on by default"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_passes_strictly(values_file: Path) -> None:
    report = helm.lint(
        CHART_DIR,
        load_values(values_file),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSIONS[0]}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_every_value_set_renders_the_expected_resources(rendered: Rendered) -> None:
    kinds = {m["kind"] for m in rendered.manifests}
    assert "ConfigMap" in kinds
    assert "Secret" not in kinds, "secrets are referenced, never rendered by the chart"
    values = deep_merge(chart_defaults(), rendered.values)
    for component in ("serving", "flight"):
        if values[component]["enabled"]:
            rendered.get("Deployment", f"{rendered.fullname}-{component}")
            rendered.get("Service", f"{rendered.fullname}-{component}")
    if values["materialize"]["enabled"]:
        on_spark = values["spark"]["enabled"] and values["spark"]["materialize"]
        rendered.get("CronJob", f"{rendered.fullname}-{'spark-' if on_spark else ''}materialize")
    for manifest in rendered.manifests:
        name = manifest["metadata"]["name"]
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
        assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_notes_render_with_connection_commands(rendered: Rendered) -> None:
    values = deep_merge(chart_defaults(), rendered.values)
    if values["serving"]["enabled"]:
        assert f"port-forward svc/{rendered.fullname}-serving" in rendered.notes
    assert "{{" not in rendered.notes
    # The materialization CronJob the notes tell to run is the one rendered (Spark's included).
    for cron in rendered.of_kind("CronJob"):
        if cron["metadata"]["labels"]["app.kubernetes.io/component"] in ("materialize", "spark-materialize"):
            assert f"--from=cronjob/{cron['metadata']['name']} " in rendered.notes


# ---- Kubernetes API schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(
    rendered: Rendered, kube_version: str
) -> None:
    failures = []
    for manifest in rendered.manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked structurally in test_service_monitor_scrapes_metrics_ports
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            failures.append(
                f"{manifest['kind']}/{manifest['metadata']['name']}: {where}: {exc.message}"
            )
    assert failures == []


def test_schema_validation_is_strict() -> None:
    """The validator really rejects unknown fields, so the test above means something."""
    deployment = render().get("Deployment", f"{FULL}-serving")
    broken = deep_merge(deployment, {"spec": {"template": {"spec": {"containerz": []}}}})
    with pytest.raises(kubernetes_validate.ValidationError, match="containerz"):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)


# ---- The product's own config model --------------------------------------------------------------


def test_rendered_quiver_yaml_is_accepted_by_quiver(rendered: Rendered, tmp_path: Path) -> None:
    """quiver.yaml plus each container's QUIVER_* variables load with QuiverConfig (extra=forbid)."""
    (tmp_path / "quiver.yaml").write_text(
        rendered.get("ConfigMap", f"{rendered.fullname}-config")["data"]["quiver.yaml"]
    )
    for _manifest, pod in rendered.workloads():
        for container in pod["containers"]:
            env = {
                name: entry["value"]
                for name, entry in env_of(container).items()
                if name.startswith("QUIVER_") and "value" in entry
            }
            config = load_config(tmp_path, env=env)
            assert config.project == deep_merge(chart_defaults(), rendered.values)["project"]
            assert Path(config.registry).is_absolute(), "the registry lives on the shared volume"


def test_config_follows_values() -> None:
    out = render(VALUE_SETS["full"]).quiver_yaml()
    assert out["project"] == "fraud"
    assert out["offline_store"]["root"] == "s3://example-features/fraud"
    assert out["registry"] == "/var/lib/quiver/registry"
    assert out["online_store"]["hosts"] == [
        "aerospike-0.aerospike.db.svc.cluster.local:4333",
        "[fd00::10]:4333",
    ]
    assert out["online_store"]["user"] == "quiver"
    assert out["serving"] == {
        "host": "0.0.0.0",
        "port": 6566,
        "workers": 2,
        "max_entities": 500,
        "max_delete_entities": 1000,
        "heavy_request_entities": 100,
        "max_heavy_requests": 2,
        "max_future_seconds": 300,
        "max_workers_threads": 4,
        "grace_seconds": 15,
        "health_port": 6567,
    }
    assert out["flight"]["location"] == "grpc+tls://flight.example.com:443"
    # configOverrides reaches fields the chart does not model.
    assert out["flight"]["history_cache_bytes"] == 2147483648
    assert out["flight"]["grace_seconds"] == 50
    assert out["telemetry"]["tracing"]["sampling_ratio"] == 0.05
    assert (
        out["telemetry"]["metrics"]["pushgateway"] == "prometheus-pushgateway.monitoring.svc:9091"
    )
    sqlite = render(VALUE_SETS["sqlite"]).quiver_yaml()["online_store"]
    assert sqlite == {"type": "sqlite", "path": "/var/lib/quiver/online.db"}


def test_inline_definition_files_are_valid_python() -> None:
    for path in CI_VALUES:
        for name, source in load_values(path).get("featureRepo", {}).get("files", {}).items():
            compile(source, f"{path.name}:{name}", "exec")


# ---- Invariants --------------------------------------------------------------------------------


def test_serving_probes_are_native_grpc_health_checks(rendered: Rendered) -> None:
    values = deep_merge(chart_defaults(), rendered.values)
    if not values["serving"]["enabled"]:
        pytest.skip("serving disabled in this value set")
    _, pod = rendered.workload("serving")
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # The plaintext health-only port when there is one (kubelet speaks neither TLS nor tokens).
    probe_port = ports.get("health", ports["grpc"])
    assert ("health" in ports) == (values["serving"]["healthPort"] > 0)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert container[probe]["grpc"]["port"] == probe_port
    assert container["readinessProbe"]["grpc"]["service"] == HEALTH_SERVICE
    assert container["livenessProbe"]["grpc"]["service"] == ""
    assert container["startupProbe"]["grpc"]["service"] == ""


def test_flight_probes_are_native_grpc_health_checks_on_the_health_port(rendered: Rendered) -> None:
    """serve-flight runs grpc.health.v1 on a side port; readiness asks about the Flight service."""
    values = deep_merge(chart_defaults(), rendered.values)
    if not values["flight"]["enabled"]:
        pytest.skip("flight disabled in this value set")
    _, pod = rendered.workload("flight")
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == values["flight"]["health"]["port"] != ports["flight"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert container[probe]["grpc"]["port"] == ports["health"]
    assert container["readinessProbe"]["grpc"]["service"] == "arrow.flight.protocol.FlightService"
    assert container["livenessProbe"]["grpc"]["service"] == ""
    assert container["startupProbe"]["grpc"]["service"] == ""
    config = rendered.quiver_yaml()["flight"]
    assert config["health_port"] == ports["health"]
    service = rendered.get("Service", f"{rendered.fullname}-flight")
    assert "health" not in [p["name"] for p in service["spec"]["ports"]]


def test_flight_limits_and_spine_settings_reach_the_config() -> None:
    out = render({"flight": {
        "maxSpineBytes": 5 << 30, "maxStoredSpineBytes": 50 << 30, "spineSweepSeconds": 60,
        "spineRoot": "labels", "maxConcurrentStreams": 4, "maxConcurrentUploads": 2,
        "health": {"port": 9000, "checkSeconds": 2},
    }}).quiver_yaml()["flight"]
    assert {k: out[k] for k in (
        "max_spine_bytes", "max_stored_spine_bytes", "spine_sweep_seconds", "spine_root",
        "max_concurrent_streams", "max_concurrent_uploads", "health_port", "health_check_seconds",
    )} == {
        "max_spine_bytes": 5 << 30, "max_stored_spine_bytes": 50 << 30, "spine_sweep_seconds": 60,
        "spine_root": "labels", "max_concurrent_streams": 4, "max_concurrent_uploads": 2,
        "health_port": 9000, "health_check_seconds": 2,
    }
    assert "ticket_key_file" not in out


def test_flight_ticket_keys_come_from_a_user_secret_shared_by_every_replica() -> None:
    out = render({"flight": {"replicaCount": 3,
                             "ticketKeys": {"existingSecret": "quiver-ticket-keys", "secretKey": "k"}}})
    _, pod = out.workload("flight")
    (volume,) = [v for v in pod["volumes"] if v["name"] == "ticket-keys"]
    assert volume["secret"]["secretName"] == "quiver-ticket-keys"
    assert volume["secret"]["items"] == [{"key": "k", "path": "keys"}]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "ticket-keys"]
    assert mount["readOnly"]
    key_file = out.quiver_yaml()["flight"]["ticket_key_file"]
    assert key_file == f"{mount['mountPath']}/keys"
    # Only Flight pods sign tickets.
    _, serving = out.workload("serving")
    assert all(v["name"] != "ticket-keys" for v in serving["volumes"])


def test_containers_run_hardened(rendered: Rendered) -> None:
    values = deep_merge(chart_defaults(), rendered.values)
    for manifest, pod in rendered.workloads():
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        pod_sc = pod["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        # Only Spark's submit pods hold a token: Spark's scheduler creates pods through the API.
        spark = manifest["metadata"]["labels"]["app.kubernetes.io/component"].startswith("spark")
        assert pod["automountServiceAccountToken"] is spark, where
        image = values["spark"]["image"] if spark else values["image"]
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in containers(pod):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert sc.get("privileged", False) is False, where
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and tmp[0]["name"] in tmp_volumes, f"{where}: /tmp is an emptyDir"
            assert "memory" in container["resources"]["limits"], where
            assert container["image"].startswith(image["repository"]), where


def test_workloads_use_the_chart_service_account(rendered: Rendered) -> None:
    values = deep_merge(chart_defaults(), rendered.values)
    accounts = {m["metadata"]["name"] for m in rendered.of_kind("ServiceAccount")}
    for _, pod in rendered.workloads():
        if values["serviceAccount"]["create"]:
            assert pod["serviceAccountName"] in accounts
        else:
            assert pod["serviceAccountName"] == (values["serviceAccount"]["name"] or "default")


def _readme_value_rows() -> dict[str, str]:
    rows = {}
    for line in (CHART_DIR / "README.md").read_text().splitlines():
        match = re.match(r"^\| `([^`]+)` \|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def _value_paths(values: dict[str, Any], target: str, prefix: str = "") -> list[str]:
    """Dotted paths (lists as their parent path) under which `target` appears in values."""
    found = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _value_paths(value, target, f"{path}.")
        elif isinstance(value, list):
            if target in yaml.safe_dump(value):
                found.append(path)
        elif value == target:
            found.append(path)
    return found


def _documented_as_user_provided(values: dict[str, Any], name: str) -> bool:
    rows = _readme_value_rows()
    for path in _value_paths(values, name):
        candidates = [path, *(path.rsplit(".", i)[0] for i in range(1, path.count(".") + 1))]
        if any("user-provided" in rows.get(c, "") for c in candidates):
            return True
    return False


def test_referenced_config_maps_and_secrets_exist_or_are_user_provided(rendered: Rendered) -> None:
    """Each ConfigMap key a pod uses is rendered by the chart; anything else (every Secret) is
    named in the values under a key the README documents as user-provided."""
    config_maps = {m["metadata"]["name"]: m.get("data", {}) for m in rendered.of_kind("ConfigMap")}
    values = deep_merge(chart_defaults(), rendered.values)
    problems = []

    def check(kind: str, name: str, keys: list[str], where: str) -> None:
        if kind == "ConfigMap" and name in config_maps:
            missing = [k for k in keys if k not in config_maps[name]]
            if missing:
                problems.append(f"{where}: ConfigMap {name} has no keys {missing}")
        elif not _documented_as_user_provided(values, name):
            problems.append(f"{where}: {kind} {name} is neither rendered nor a user-provided value")

    for manifest, pod in rendered.workloads():
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        for volume in pod["volumes"]:
            sources = [volume, *volume.get("projected", {}).get("sources", [])]
            for source in sources:
                if "configMap" in source:
                    ref = source["configMap"]
                    check("ConfigMap", ref["name"], [i["key"] for i in ref.get("items", [])], where)
                if "secret" in source:
                    ref = source["secret"]
                    check(
                        "Secret",
                        ref.get("secretName", ref.get("name", "")),
                        [i["key"] for i in ref.get("items", [])],
                        where,
                    )
        for container in containers(pod):
            for entry in container.get("env", []):
                value_from = entry.get("valueFrom", {})
                if "configMapKeyRef" in value_from:
                    ref = value_from["configMapKeyRef"]
                    check("ConfigMap", ref["name"], [ref["key"]], where)
                if "secretKeyRef" in value_from:
                    ref = value_from["secretKeyRef"]
                    check("Secret", ref["name"], [ref["key"]], where)
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        check(kind, source[key]["name"], [], where)
        for secret in pod.get("imagePullSecrets", []):
            check("Secret", secret["name"], [], where)
    assert problems == []


def test_services_target_named_container_ports(rendered: Rendered) -> None:
    pods = {
        m["metadata"]["labels"]["app.kubernetes.io/component"]: pod
        for m, pod in rendered.workloads()
        if m["kind"] == "Deployment"
    }
    for service in rendered.of_kind("Service"):
        pod = pods[service["spec"]["selector"]["app.kubernetes.io/component"]]
        names = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port)


def test_pods_roll_when_the_configuration_changes() -> None:
    def checksum(values: dict[str, Any]) -> str:
        _, pod_template = next(
            (m, m["spec"]["template"]) for m in render(values).of_kind("Deployment")
        )
        return str(pod_template["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"aerospike": {"readTimeoutMs": 20}})


# ---- Focused combinations --------------------------------------------------------------------


def test_aerospike_tls_and_auth_come_from_user_secrets() -> None:
    out = render(VALUE_SETS["aerospike-tls"])
    tls = out.quiver_yaml()["online_store"]["tls"]
    assert tls == {
        "enabled": True,
        "name": "aerospike-cluster",
        "cafile": "/etc/quiver/aerospike-tls/ca.crt",
        "certfile": "/etc/quiver/aerospike-tls/tls.crt",
        "keyfile": "/etc/quiver/aerospike-tls/tls.key",
    }
    for manifest, pod in out.workloads():
        volume = next(v for v in pod["volumes"] if v["name"] == "aerospike-tls")
        assert volume["secret"]["secretName"] == "quiver-aerospike-tls"
        assert {i["path"] for i in volume["secret"]["items"]} == {"ca.crt", "tls.crt", "tls.key"}
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "aerospike-tls")
        assert mount == {
            "name": "aerospike-tls",
            "mountPath": "/etc/quiver/aerospike-tls",
            "readOnly": True,
        }
        password = env_of(container)["QUIVER_AEROSPIKE_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": "quiver-aerospike-auth", "key": "password"}, manifest["kind"]
    server_only = render(VALUE_SETS["aerospike-tls-server-only"]).quiver_yaml()["online_store"][
        "tls"
    ]
    assert "certfile" not in server_only and server_only["cafile"].endswith("/ca.crt")
    assert "QUIVER_AEROSPIKE_PASSWORD" not in env_of(
        render().workload("serving")[1]["containers"][0]
    )


def test_tracing_goes_to_standard_otel_variables() -> None:
    _, pod = render(VALUE_SETS["tracing"]).workload("serving")
    env = env_of(pod["containers"][0])
    assert (
        env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
        == "http://otel-collector.observability.svc:4318"
    )
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.1"
    assert env["OTEL_SERVICE_NAME"]["value"] == "quiver-serving"
    attributes = env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(",")
    assert "deployment.environment=staging" in attributes
    assert "k8s.pod.name=$(POD_NAME)" in attributes
    # $(POD_NAME) expands only if POD_NAME is defined before it.
    names = [e["name"] for e in pod["containers"][0]["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")

    _, cron_pod = render(VALUE_SETS["tracing"]).workload("materialize")
    assert env_of(cron_pod["containers"][0])["OTEL_SERVICE_NAME"]["value"] == "quiver-materialize"
    full_env = env_of(render(VALUE_SETS["full"]).workload("flight")[1]["containers"][0])
    assert full_env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"] == {
        "name": "quiver-otlp-headers",
        "key": "headers",
    }
    assert full_env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc"
    assert not any(
        n.startswith("OTEL_") for n in env_of(render().workload("serving")[1]["containers"][0])
    )


def test_autoscaling_and_disruption_budgets() -> None:
    out = render(VALUE_SETS["autoscaling"])
    for component, low, high in (("serving", 3, 20), ("flight", 2, 6)):
        hpa = out.get("HorizontalPodAutoscaler", f"{FULL}-{component}")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"{FULL}-{component}",
        }
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (low, high)
        assert "replicas" not in out.get("Deployment", f"{FULL}-{component}")["spec"]
        pdb = out.get("PodDisruptionBudget", f"{FULL}-{component}")
        pod_labels = out.get("Deployment", f"{FULL}-{component}")["spec"]["template"]["metadata"][
            "labels"
        ]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert out.get("PodDisruptionBudget", f"{FULL}-serving")["spec"] == {
        "minAvailable": 2,
        "selector": out.get("PodDisruptionBudget", f"{FULL}-serving")["spec"]["selector"],
    }
    assert out.get("PodDisruptionBudget", f"{FULL}-flight")["spec"]["maxUnavailable"] == 1
    metrics = out.get("HorizontalPodAutoscaler", f"{FULL}-serving")["spec"]["metrics"]
    assert {m["resource"]["name"] for m in metrics} == {"cpu", "memory"}
    assert not render().of_kind("HorizontalPodAutoscaler")
    assert not render().of_kind("PodDisruptionBudget")


def test_network_policies_select_pods_and_open_their_ports() -> None:
    out = render(VALUE_SETS["full"])
    for component, port in (("serving", 6566), ("flight", 8815)):
        policy = out.get("NetworkPolicy", f"quiver-{component}")
        deployment = out.get("Deployment", f"quiver-{component}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert ingress_ports == ({port, 6567, 9464} if component == "serving" else {port, 9464})
        health = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 6567]
        assert all("from" not in rule for rule in health), "probes come from the node"
        egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
        assert {53, 4333, 4317, 9091, 443} <= egress_ports
    jobs = out.get("NetworkPolicy", "quiver-jobs")
    assert jobs["spec"]["podSelector"]["matchExpressions"][0]["values"] == [
        "materialize", "monitor", "apply",
    ]
    custom = render(VALUE_SETS["networkpolicy-egress-tracing"]).get(
        "NetworkPolicy", f"{FULL}-serving"
    )
    assert {p["port"] for r in custom["spec"]["egress"] for p in r["ports"]} == {53, 3000, 14317}
    open_policy = render(VALUE_SETS["networkpolicy-open"]).get("NetworkPolicy", f"{FULL}-serving")
    assert open_policy["spec"]["policyTypes"] == ["Ingress"]
    assert all("from" not in rule for rule in open_policy["spec"]["ingress"])


def test_service_monitor_scrapes_metrics_ports() -> None:
    out = render(VALUE_SETS["full"])
    (monitor,) = out.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]
    selected = [
        s
        for s in out.of_kind("Service")
        if selector["matchLabels"].items() <= s["metadata"]["labels"].items()
        and s["metadata"]["labels"]["app.kubernetes.io/component"]
        in selector["matchExpressions"][0]["values"]
    ]
    scraped = [s for s in selected if any(p["name"] == "metrics" for p in s["spec"]["ports"])]
    assert {s["metadata"]["name"] for s in scraped} == {"quiver-serving", "quiver-flight"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    for value in (endpoint["interval"], endpoint["scrapeTimeout"]):
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", value)
    assert not render(VALUE_SETS["metrics-off"]).of_kind("ServiceMonitor")


def test_materialize_cron_job_runs_incremental_materialization() -> None:
    out = render(deep_merge(VALUE_SETS["full"], {"spark": {"enabled": False}}))
    cron = out.get("CronJob", "quiver-materialize")
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["timeZone"] == "Etc/UTC"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["--repo", "/etc/quiver/repo", "materialize-incremental", "now"]
    assert env_of(container)["QUIVER_LOG_CONTEXT"]["value"] == "cron"
    remaining = render({"materialize": {"enabled": False}}).of_kind("CronJob")
    assert [c["metadata"]["name"] for c in remaining] == [f"{FULL}-monitor"]


def test_monitor_cron_job_runs_quiver_monitor() -> None:
    out = render(VALUE_SETS["full"])
    cron = out.get("CronJob", "quiver-monitor")
    assert cron["spec"]["schedule"] == "0 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["--repo", "/etc/quiver/repo", "monitor", "--current", "serving"]
    # It reads the same offline store as the servers that write the profiles.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    serving_mounts = {m["mountPath"] for m in out.workload("serving")[1]["containers"][0]["volumeMounts"]}
    assert mounts == serving_mounts
    monitoring = out.quiver_yaml()["monitoring"]
    assert monitoring["serving_sample_rate"] == 0.05
    assert monitoring["reference"] == "training_set:fraud_model_v3"
    assert not render({"monitor": {"enabled": False}, "materialize": {"enabled": False}}).of_kind(
        "CronJob"
    )


def test_prometheus_rule_alerts_on_drift_staleness_not_found_and_errors() -> None:
    out = render(VALUE_SETS["full"])
    (rule,) = out.of_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {
        "QuiverFeatureDrift", "QuiverFeatureViewStale", "QuiverNotFoundRatioHigh",
        "QuiverErrorRateHigh", "QuiverMonitorNotRunning",
    }
    assert rules["QuiverFeatureDrift"]["for"] == "30m"
    assert all(r["labels"]["team"] == "ml-platform" for r in rules.values())
    # Every series a rule reads is one the servers export, with labels they carry.
    from quiver_server.telemetry.metrics import exported_metrics

    exported = exported_metrics()
    for name, alert in rules.items():
        used = set(re.findall(r"\b(quiver_[a-z_]+)\b", alert["expr"]))
        assert used and used <= set(exported), (name, used - set(exported))
        for labels in re.findall(r"by \(([^)]*)\)", alert["expr"]):
            for label in (part.strip() for part in labels.split(",")):
                if label != "namespace":  # added by the scrape, not by Quiver
                    assert any(label in exported[series] for series in used), (name, label)
    assert not render().of_kind("PrometheusRule"), "off by default, like the ServiceMonitor"


def test_spark_jobs_are_submitted_to_kubernetes_with_their_own_account() -> None:
    out = render(VALUE_SETS["full"])
    account = out.get("ServiceAccount", "quiver-spark")
    assert account["automountServiceAccountToken"] is True
    role = out.get("Role", "quiver-spark")
    [rule] = role["rules"]
    assert set(rule["resources"]) == {"pods", "services", "configmaps", "persistentvolumeclaims"}
    assert {"create", "delete", "watch", "list"} <= set(rule["verbs"])
    binding = out.get("RoleBinding", "quiver-spark")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "quiver-spark",
                                    "namespace": NAMESPACE}]
    cron = out.get("CronJob", "quiver-spark-materialize")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "quiver-spark"
    (submit,) = pod["containers"]
    args = submit["args"]
    assert submit["command"] == ["spark-submit"]
    assert args[:4] == ["--master", "k8s://https://kubernetes.default.svc", "--deploy-mode", "cluster"]
    conf = dict(a.split("=", 1) for a in args[args.index("--name") + 2:] if "=" in a)
    assert conf["spark.kubernetes.namespace"] == NAMESPACE
    assert conf["spark.kubernetes.authenticate.driver.serviceAccountName"] == "quiver-spark"
    assert conf["spark.kubernetes.container.image"] == "registry.example.com/quiver-spark:0.1.0"
    assert (conf["spark.executor.instances"], conf["spark.executor.memory"]) == ("4", "4g")
    assert conf["spark.sql.shuffle.partitions"] == "64"
    assert args[-6:] == ["--repo", "/etc/quiver/repo", "materialize-incremental", "now", "--engine", "spark"]
    assert not [c for c in out.of_kind("CronJob") if c["metadata"]["name"] == "quiver-materialize"]
    [backfill] = [j for j in out.of_kind("Job") if j["metadata"]["name"].startswith(
        "quiver-backfill-user-spend-2024-")]
    (submit,) = backfill["spec"]["template"]["spec"]["containers"]
    assert submit["args"][-5:] == ["user_transaction_stats", "2024-01-01", "2025-01-01", "--engine", "spark"]
    # Driver and executors mount the feature repo and the offline store like the other pods.
    templates = out.get("ConfigMap", "quiver-spark-pods")["data"]
    for role in ("driver", "executor"):
        template = yaml.safe_load(templates[f"{role}.yaml"])
        [container] = template["spec"]["containers"]
        assert container["name"] == f"spark-kubernetes-{role}"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/quiver/repo", "/tmp", "/etc/quiver/spark"} <= mounts
        assert env_of(container)["QUIVER_OFFLINE_STORE__SPARK__MASTER"]["value"].startswith("k8s://")
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_spark_job_names_fit_kubernetes_limits_and_upgrades() -> None:
    """A Job's pod template cannot change and its name becomes a label (63 characters); a
    CronJob's name takes 11 more characters in its Jobs' names (52 at most)."""

    def backfill_job(out: Rendered) -> dict[str, Any]:
        [job] = [j for j in out.of_kind("Job")
                 if j["metadata"]["labels"]["app.kubernetes.io/component"] == "spark-backfill"]
        return job

    def spark(backfill: dict[str, str], **more: Any) -> Rendered:
        values = deep_merge(VALUE_SETS["full"], {"fullnameOverride": "f" * 46, **more})
        values["spark"]["backfills"] = [backfill]
        return render(values)

    entry = {"name": "b" * 32, "view": "user_transaction_stats", "start": "2024-01-01",
             "end": "2025-01-01"}
    out = spark(entry)
    for manifest in out.of_kind("Job") + out.of_kind("CronJob"):
        limit = 52 if manifest["kind"] == "CronJob" else 63
        assert len(manifest["metadata"]["name"]) <= limit, manifest["metadata"]["name"]
    job = backfill_job(out)
    # What the run does is in its name: `helm upgrade` with another window, image or setting
    # makes a new Job instead of failing on the old one's immutable pod template.
    name = job["metadata"]["name"]
    names = {name}
    for changed in (spark({**entry, "end": "2025-02-01"}),
                    spark(entry, spark={"image": {"tag": "0.2.0"}})):
        names.add(backfill_job(changed)["metadata"]["name"])
    assert len(names) == 3
    assert backfill_job(spark(entry))["metadata"]["name"] == name


def test_spark_executors_mount_no_service_account_token() -> None:
    """Executors never call the Kubernetes API: only the driver's account mounts a token."""
    templates = render(VALUE_SETS["full"]).get("ConfigMap", "quiver-spark-pods")["data"]
    assert yaml.safe_load(templates["executor.yaml"])["spec"]["automountServiceAccountToken"] is False


def test_apply_job_reruns_only_when_its_inputs_change() -> None:
    def name(values: dict[str, Any]) -> str:
        (job,) = render(values).of_kind("Job")
        assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
            "--repo",
            "/etc/quiver/repo",
            "apply",
        ]
        return str(job["metadata"]["name"])

    base = name({})
    assert base.startswith(f"{FULL}-apply-") and len(base) <= 63
    assert name({"serving": {"replicaCount": 5}}) == base
    assert name({"featureRepo": {"files": {"a.py": "x = 1\n"}}}) != base
    assert name({"image": {"tag": "0.2.0"}}) != base
    assert name({"apply": {"trigger": "again"}}) != base


def test_feature_repo_from_a_volume_is_assembled_by_an_init_container() -> None:
    out = render(VALUE_SETS["repo-volume"])
    _, pod = out.workload("serving")
    (init,) = pod["initContainers"]
    assert init["command"][:2] == ["python", "-c"]
    assert init["command"][3:] == [
        "/etc/quiver/repo-source",
        "/etc/quiver/config",
        "/etc/quiver/repo",
    ]
    source_mount = next(m for m in init["volumeMounts"] if m["name"] == "repo-source")
    assert source_mount["subPath"] == "feature_repo" and source_mount["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["repo-source"]["persistentVolumeClaim"]["claimName"] == "quiver-definitions"
    assert volumes["feature-repo"] == {"name": "feature-repo", "emptyDir": {}}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "quiver-shared"
    assert not out.of_kind("PersistentVolumeClaim")


def test_feature_repo_init_script_assembles_the_repo(tmp_path: Path) -> None:
    """Run the init container's script for real: definitions first, the chart's files on top."""
    import subprocess
    import sys

    _, pod = render(VALUE_SETS["repo-volume"]).workload("serving")
    script = pod["initContainers"][0]["command"][2]
    source, config, target = tmp_path / "src", tmp_path / "cfg", tmp_path / "repo"
    (source / "pkg").mkdir(parents=True)
    (source / ".git").mkdir()
    (source / "features.py").write_text("A = 1\n")
    (source / "pkg" / "more.py").write_text("B = 2\n")
    (source / "quiver.yaml").write_text("project: stale\n")
    config.mkdir()
    (config / "..data").mkdir()  # what a ConfigMap mount looks like
    (config / "quiver.yaml").write_text("project: fresh\n")
    target.mkdir()
    subprocess.run(
        [sys.executable, "-c", script, str(source), str(config), str(target)], check=True
    )
    assert (target / "quiver.yaml").read_text() == "project: fresh\n"
    assert (target / "pkg" / "more.py").exists() and (target / "features.py").exists()
    assert not (target / ".git").exists() and not (target / "..data").exists()


def test_default_feature_repo_is_a_projected_config_map() -> None:
    _, pod = render(VALUE_SETS["full"]).workload("serving")
    volume = next(v for v in pod["volumes"] if v["name"] == "feature-repo")
    names = [s["configMap"]["name"] for s in volume["projected"]["sources"]]
    assert names == ["fraud-definitions", "quiver-config"], "the chart's quiver.yaml must win"
    assert "common.py" in render(VALUE_SETS["full"]).get("ConfigMap", "quiver-config")["data"]


# ---- Wrong values fail with the schema's message ---------------------------------------------------


BAD_VALUES = {
    "unknown top-level key": (
        {"servng": {"port": 1}},
        "additional properties 'servng' not allowed",
    ),
    "port as a string": (
        {"serving": {"port": "6566"}},
        "at '/serving/port': got string, want integer",
    ),
    "port out of range": ({"flight": {"port": 70000}}, "at '/flight/port': maximum"),
    "unknown online store": ({"onlineStore": {"type": "redis"}}, "at '/onlineStore/type'"),
    "host without port": ({"aerospike": {"hosts": ["aerospike"]}}, "at '/aerospike/hosts/0'"),
    "no hosts": ({"aerospike": {"hosts": []}}, "at '/aerospike/hosts': minItems"),
    "tls without secret": (
        {"aerospike": {"tls": {"enabled": True, "name": "as"}}},
        "at '/aerospike/tls/existingSecret'",
    ),
    "user without secret": (
        {"aerospike": {"auth": {"user": "quiver"}}},
        "at '/aerospike/auth/existingSecret'",
    ),
    "client cert without key": (
        {
            "aerospike": {
                "tls": {"enabled": True, "name": "a", "existingSecret": "s", "certKey": "tls.crt"}
            }
        },
        "at '/aerospike/tls/keyKey'",
    ),
    "sampling ratio above 1": (
        {"telemetry": {"tracing": {"samplingRatio": 1.5}}},
        "at '/telemetry/tracing/samplingRatio': maximum",
    ),
    "endpoint without scheme": (
        {"telemetry": {"tracing": {"endpoint": "collector:4317"}}},
        "at '/telemetry/tracing/endpoint'",
    ),
    "root allowed": (
        {"securityContext": {"runAsNonRoot": False}},
        "at '/securityContext/runAsNonRoot'",
    ),
    "bad cron schedule": (
        {"materialize": {"schedule": "every hour"}},
        "at '/materialize/schedule'",
    ),
    "bad concurrency policy": (
        {"materialize": {"concurrencyPolicy": "Queue"}},
        "at '/materialize/concurrencyPolicy'",
    ),
    "misspelled nested key": (
        {"serving": {"autoscaling": {"maxReplica": 3}}},
        "additional properties 'maxReplica' not allowed",
    ),
    "autoscaling without a target": (
        {"flight": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}},
        "at '/flight/autoscaling'",
    ),
    "both repo sources": (
        {"featureRepo": {"existingConfigMap": "defs", "volume": {"emptyDir": {}}}},
        "at '/featureRepo/volume'",
    ),
    "quiver.yaml as a definition file": (
        {"featureRepo": {"files": {"quiver.yaml": "x"}}},
        "at '/featureRepo/files': 'not' failed",
    ),
    "bad project name": ({"project": "fraud detection"}, "at '/project'"),
}


@pytest.mark.parametrize("values, message", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_wrong_values_fail_with_the_schema_message(values: dict[str, Any], message: str) -> None:
    chart = helm.Chart.load(CHART_DIR)
    with pytest.raises(helm.HelmValuesError) as failure:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert "values don't meet the specifications of the schema" in str(failure.value)
    assert message in str(failure.value)


@pytest.mark.parametrize("path", sorted(BAD_VALUES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_bad_values_files_fail_install_and_lint(path: Path) -> None:
    """Like `helm install -f bad.yaml` and `helm lint -f bad.yaml`: each file names its message."""
    expected = re.search(r"^# expect: (.+)$", path.read_text(), re.M)
    assert expected, f"{path.name} needs an '# expect: <message>' line"
    values = load_values(path)
    with pytest.raises(helm.HelmError, match=re.escape(expected.group(1))):
        helm.Chart.load(CHART_DIR).render(values, name=RELEASE, namespace=NAMESPACE)
    report = helm.lint(CHART_DIR, values, namespace=NAMESPACE)
    assert any(expected.group(1) in error for error in report["errors"]), report


CROSS_FIELD = {
    "spark materialization into sqlite": (
        {"spark": {"enabled": True}, "onlineStore": {"type": "sqlite"},
         "serving": {"replicaCount": 1, "autoscaling": {"enabled": False}}},
        "spark.materialize writes the online store from Spark executors",
    ),
    "grace period too short": (
        {"serving": {"graceSeconds": 30}},
        "serving.terminationGracePeriodSeconds (30) must exceed",
    ),
    "flight drain longer than the pod grace": (
        {"flight": {"graceSeconds": 60}},
        "flight.terminationGracePeriodSeconds (60) must exceed flight.graceSeconds (60)",
    ),
    "metrics port clash": (
        {"telemetry": {"metrics": {"port": 6566}}},
        "serving.port and telemetry.metrics.port",
    ),
    "flight health port clash": (
        {"flight": {"health": {"port": 8815, "checkSeconds": 5}}},
        "flight.health.port (8815) must differ",
    ),
    "min above max replicas": (
        {"flight": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        "flight.autoscaling.minReplicas (5)",
    ),
    "sqlite with replicas": (
        {"onlineStore": {"type": "sqlite"}},
        "onlineStore.type sqlite is one file",
    ),
}


@pytest.mark.parametrize("values, message", CROSS_FIELD.values(), ids=CROSS_FIELD.keys())
def test_cross_field_mistakes_fail_with_a_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        helm.Chart.load(CHART_DIR).render(values, name=RELEASE, namespace=NAMESPACE)


# ---- Documentation -----------------------------------------------------------------------------


def _leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths += _leaf_paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def test_readme_lists_every_value_with_its_default() -> None:
    rows = _readme_value_rows()
    defaults = chart_defaults()
    undocumented = [
        p for p in _leaf_paths(defaults) if not any(p == r or p.startswith(r + ".") for r in rows)
    ]
    assert undocumented == [], "add these to the values table of deploy/helm/quiver/README.md"
    stale = []
    for row in rows:
        node: Any = defaults
        for part in row.split("."):
            if not isinstance(node, dict) or part not in node:
                stale.append(row)
                break
            node = node[part]
    assert stale == [], "README lists values that values.yaml no longer has"
    for row, line in rows.items():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3 and cells[1] and cells[2], f"{row}: needs a default and a meaning"


def test_schema_describes_every_value() -> None:
    import json

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False

    def walk(node: dict[str, Any], path: str) -> list[str]:
        missing = []
        for key, child in node.get("properties", {}).items():
            where = f"{path}{key}"
            if "description" not in child and child.get("type") != "object":
                missing.append(where)
            if child.get("type") == "object" and "properties" in child:
                assert child.get("additionalProperties") is False or key in {
                    "securityContext",
                    "podSecurityContext",
                }, f"{where} should reject unknown keys"
                missing += walk(child, f"{where}.")
        return missing

    assert walk(schema, "") == []


def test_deploy_guide_values_render_and_validate() -> None:
    """The YAML in deploy/README.md ("Deploy on Kubernetes") is a valid release configuration."""
    guide = (CHART_DIR.parents[1] / "README.md").read_text()
    assert "## Deploy on Kubernetes" in guide
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", guide, re.S)]
    assert len(blocks) >= 2
    base = blocks[0]
    for block in blocks:
        out = render(deep_merge(base, block))
        for manifest in out.manifests:
            if not manifest["apiVersion"].startswith("monitoring.coreos.com/"):
                kubernetes_validate.validate(manifest, KUBE_VERSIONS[0], strict=True)
    sqlite = deep_merge(
        load_values(CHART_DIR / "ci" / "sqlite-values.yaml"), {"project": "fraud_detection"}
    )
    render(sqlite)
    # Resource names the guide's commands use, for a release named "quiver".
    sources = helm.Chart.load(CHART_DIR).render(base, name="quiver", namespace="features")
    names = {
        (doc["kind"], doc["metadata"]["name"])
        for path, text in sources.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    }
    for kind, name in (
        ("Service", "quiver-serving"),
        ("Service", "quiver-serving-headless"),
        ("Service", "quiver-flight"),
        ("CronJob", "quiver-materialize"),
        ("PersistentVolumeClaim", "quiver-data"),
    ):
        assert (kind, name) in names, (kind, name)
        assert name in guide
