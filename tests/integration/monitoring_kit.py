"""Helpers for the monitoring tests: real headless Chromium, promtool and the chart's rules.

Chromium (Debian `chromium`) and promtool (Debian `prometheus`) are installed by
`make test-tools`, which `make test` runs first. A missing tool fails the test
with that instruction rather than skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "helm" / "quiver"
ARTIFACTS = Path(os.environ.get("QUIVER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]


def tool(name: str, path: str | None = None) -> str:
    found = path if path and Path(path).exists() else shutil.which(name)
    if not found:
        raise AssertionError(f"{name} is not installed: run `make test-tools` (apt-get install)")
    return found


def chromium() -> str:
    return tool("chromium", "/usr/bin/chromium")


def open_in_chromium(page: Path, screenshot_name: str) -> tuple[str, Path]:
    """Load `page` in headless Chromium: the DOM after its scripts ran, and a screenshot."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / screenshot_name
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="quiver-chromium-") as profile:
        common = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                  "--virtual-time-budget=5000"]
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120, check=False)
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = subprocess.run(
            [*common, f"--screenshot={screenshot}", "--window-size=1280,1600", url],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    return dom.stdout, screenshot


def chart_alert_rules(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rule groups of the chart's PrometheusRule, rendered by Helm's own engine."""
    import helm_python as helm

    merged = {"prometheusRule": {"enabled": True}, **(values or {})}
    sources = helm.Chart.load(CHART_DIR).render(merged, name="qv", namespace="features",
                                                is_install=True)
    for path, text in sources.items():
        if path.endswith("prometheusrule.yaml"):
            (rule,) = [doc for doc in yaml.safe_load_all(text) if doc]
            groups: list[dict[str, Any]] = rule["spec"]["groups"]
            return groups
    raise AssertionError("the chart rendered no PrometheusRule")


def input_series(exposition: str, extra_labels: dict[str, str] | None = None,
                 minutes: int = 60) -> list[dict[str, str]]:
    """Every sample of a /metrics text as a promtool input series, constant for `minutes`."""
    series = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = {**sample.labels, **(extra_labels or {})}
            selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            series.append({
                "series": f"{sample.name}{{{selector}}}",
                "values": f"{sample.value!r}+0x{minutes}",
            })
    return series


def promtool_test(groups: list[dict[str, Any]], tests: list[dict[str, Any]], workdir: Path) -> str:
    """Run `promtool test rules`; returns its output, failing the test when promtool does."""
    rules = workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    spec = workdir / "rules-test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m",
                                    "tests": tests}))
    check = subprocess.run([tool("promtool"), "check", "rules", str(rules)],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([tool("promtool"), "test", "rules", spec.name], cwd=workdir,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def alert(rule: str, groups: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, Any]:
    """An expected alert with the labels and annotations the chart gives it."""
    (found,) = [r for g in groups for r in g["rules"] if r.get("alert") == rule]
    annotations = {}
    for key, template in found["annotations"].items():
        text = template
        for name, value in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", value)
        annotations[key] = text
    return {"exp_labels": {**labels, **found["labels"]}, "exp_annotations": annotations}
