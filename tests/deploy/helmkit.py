"""The chart rendered by Helm's own engine, for the deployment tests.

`helm-python-sdk` binds Helm's Go SDK (no `helm` binary), so rendering, schema validation and
lint are exactly what `helm template`, `helm install` and `helm lint` do. Renders are cached
per values set: the tests only read them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "helm" / "quiver"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "qv"
NAMESPACE = "features"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest release
# kubernetes-validate ships schemas for.
KUBE_VERSIONS = ("1.27.0", "1.37.0")

# Workload kinds and where their pod spec lives.
POD_SPEC_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


@dataclass
class Rendered:
    """One `helm template` result: the parsed manifests and the NOTES text."""

    values: dict[str, Any]
    manifests: list[dict[str, Any]]
    notes: str
    sources: dict[str, str] = field(repr=False)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for manifest in self.of_kind(kind):
            if manifest["metadata"]["name"] == name:
                return manifest
        names = [m["metadata"]["name"] for m in self.of_kind(kind)]
        raise AssertionError(f"no {kind} named {name!r}; have {names}")

    def workloads(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every (manifest, pod spec) pair."""
        for manifest in self.manifests:
            path = POD_SPEC_PATHS.get(manifest["kind"])
            if path is None:
                continue
            spec = manifest
            for key in path:
                spec = spec[key]
            yield manifest, spec

    def workload(self, component: str) -> tuple[dict[str, Any], dict[str, Any]]:
        for manifest, spec in self.workloads():
            if manifest["metadata"]["labels"]["app.kubernetes.io/component"] == component:
                return manifest, spec
        raise AssertionError(f"no workload for component {component!r}")

    @property
    def fullname(self) -> str:
        """The resource name prefix: fullnameOverride, else <release>-quiver."""
        return str(self.values.get("fullnameOverride") or f"{RELEASE}-quiver")

    def quiver_yaml(self) -> dict[str, Any]:
        config_map = self.get("ConfigMap", f"{self.fullname}-config")
        parsed: dict[str, Any] = yaml.safe_load(config_map["data"]["quiver.yaml"])
        return parsed


@cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@cache
def _render_cached(values_json: str) -> Rendered:
    values = json.loads(values_json)
    sources = _chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[dict[str, Any]] = []
    for path, text in sorted(sources.items()):
        if path.endswith("NOTES.txt"):
            continue
        # A template that renders invalid YAML fails here, as it would at install time.
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    notes = next((t for p, t in sources.items() if p.endswith("NOTES.txt")), "")
    return Rendered(values=values, manifests=manifests, notes=notes, sources=sources)


def render(values: dict[str, Any] | None = None) -> Rendered:
    """Render the chart as `helm template qv deploy/helm/quiver -n features -f values`."""
    return _render_cached(json.dumps(values or {}, sort_keys=True))


def load_values(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return loaded


def chart_defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return defaults


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


# Named value sets used across the tests: every ci/ file, plus focused combinations.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    **{path.name.removesuffix("-values.yaml"): load_values(path) for path in CI_VALUES},
    "aerospike-tls-server-only": {
        "aerospike": {"tls": {"enabled": True, "name": "as-cluster", "existingSecret": "as-ca"}},
    },
    "tracing-grpc-default-endpoint": {"telemetry": {"tracing": {"enabled": True}}},
    "autoscaling-serving-only": {
        "serving": {"autoscaling": {"enabled": True}, "pdb": {"enabled": True}},
        "flight": {"enabled": False},
        "materialize": {"enabled": False},
    },
    "networkpolicy-open": {"networkPolicy": {"enabled": True}},
    "networkpolicy-egress-tracing": {
        "networkPolicy": {"enabled": True, "egress": {"restrict": True}},
        "telemetry": {"tracing": {"enabled": True, "endpoint": "http://collector:14317"}},
    },
    "metrics-off": {
        "telemetry": {"metrics": {"enabled": False}},
        "serviceMonitor": {"enabled": True},
    },
    "minimal-serving-only": {
        "flight": {"enabled": False},
        "materialize": {"enabled": False},
        "apply": {"enabled": False},
        "serviceAccount": {"create": False},
        "serving": {"preStopSleepSeconds": 0, "service": {"headless": False}},
    },
}
