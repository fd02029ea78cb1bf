"""The Grafana dashboards query only what the servers export, with labels those metrics have."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from quiver_server.telemetry.metrics import Metrics, exported_metrics

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "dashboards").glob("*.json"))
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def promql(dashboard: dict[str, Any]) -> list[str]:
    """Every Prometheus expression: panel targets and template variable queries."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched) of every series selector in `expr`."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may hold anything
    expr = re.sub(r"label_values\((.*),\s*\w+\s*\)", r"(\1)", expr)  # the label to list
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges: [$__rate_interval], [5m:1m]
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = []
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?", expr):
        name, matchers = match.group(1), match.group(2) or ""
        if name.lower() in PROMQL_WORDS or expr[match.end():].lstrip().startswith("("):
            continue  # a keyword or a function
        if match.start() and expr[match.start() - 1] in "$.0123456789":
            continue  # a number such as 1e-3, or a variable
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        found.append((name, labels))
    return found


def test_selector_parsing() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, method) (rate(quiver_rpc_duration_seconds_bucket'
            '{job=~"$job", method="DoGet"}[$__rate_interval]))) / scalar(x_total) or vector(0)')
    assert selectors(expr) == [
        ("quiver_rpc_duration_seconds_bucket", {"job", "method"}), ("x_total", set()),
    ]
    assert selectors('label_values(quiver_rpc_duration_seconds_count{service="s"}, job)') == [
        ("quiver_rpc_duration_seconds_count", {"service"}),
    ]


def test_there_are_serving_and_training_dashboards() -> None:
    assert {path.stem for path in DASHBOARDS} == {"quiver-serving", "quiver-training"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_queried_metric_is_exported_with_those_labels(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    exported = exported_metrics()
    queried = set()
    for expr in promql(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        for name, labels in selectors(expr):
            assert name in exported, f"{path.name}: {name} is not exported by any server: {expr}"
            unknown = labels - exported[name] - TARGET_LABELS
            assert not unknown, f"{path.name}: {name} has no label(s) {unknown}: {expr}"
            queried.add(name)
    assert queried, "a dashboard should query something"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_importable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem and dashboard["title"].startswith("Quiver / ")
    all_panels = panels(dashboard)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["prometheus"]["query"] == "prometheus"
    assert variables["tempo"]["query"] == "tempo"
    kinds = {"prometheus": 0, "tempo": 0}
    for panel in all_panels:
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']}: describe what the panel shows"
        source = panel["datasource"]
        assert source["uid"] in ("${prometheus}", "${tempo}"), panel["title"]
        kinds[source["type"]] += 1
        assert panel["targets"], panel["title"]
        if source["type"] == "tempo":
            for target in panel["targets"]:
                assert target["queryType"] == "traceql" and target["query"].startswith("{")
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    assert kinds["prometheus"] >= 5 and kinds["tempo"] >= 1, "metrics panels and trace links"


def test_latency_panels_link_to_traces_through_exemplars() -> None:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        latency = [
            t for p in panels(dashboard) for t in p.get("targets", [])
            if "quiver_rpc_duration_seconds_bucket" in t.get("expr", "") and p["type"] == "timeseries"
        ]
        assert latency and all(t.get("exemplar") for t in latency), path.name


def test_pushed_materialization_metrics_are_last_run_gauges_queried_as_such() -> None:
    """A Pushgateway keeps only each job's latest push: counters restart with every run,
    so `rate()` reads resets and histogram quantiles come out NaN. Materialization
    pushes last-run gauges, and the dashboards read them as they are."""
    from prometheus_client import Gauge

    materialize = Metrics.for_component("materialize").materialize
    assert materialize is not None
    families = list(vars(materialize).values())
    assert families and all(isinstance(f, Gauge) for f in families)
    gauges = {f._name for f in families}
    queried: set[str] = set()
    for path in DASHBOARDS:
        for expr in promql(json.loads(path.read_text())):
            if "quiver_materialize_" not in expr:
                continue
            assert not re.search(r"\b(rate|irate|increase|delta|histogram_quantile)\s*\(", expr), expr
            queried |= {name for name, _ in selectors(expr)}
    assert queried == gauges, "every last-run gauge has a panel, and nothing else is queried"
