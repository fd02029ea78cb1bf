"""The `quiver monitor` command: run the monitor, print a table, write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quiver.monitoring.v1 import profile_pb2 as pb
from quiver_server.config import QuiverConfig
from quiver_server.monitoring.monitor import MonitorResult, run_monitor
from quiver_server.monitoring.storage import ProfileStore

__all__ = ["monitor_command", "render_table"]

DRIFT_EXIT_CODE = 3
_STATUS = {
    pb.DRIFT_STATUS_OK: "ok", pb.DRIFT_STATUS_DRIFT: "DRIFT",
    pb.DRIFT_STATUS_NO_REFERENCE: "no reference", pb.DRIFT_STATUS_NO_CURRENT: "no current data",
}


def monitor_command(config: QuiverConfig, args: argparse.Namespace) -> int:
    if args.action == "training-sets":
        found = ProfileStore(config.offline_root).training_sets()
        if not found:
            print("No training-set profiles yet (they are stored when a training set is pulled).")
        for name, views in sorted(found.items()):
            print(f"{name}\t{', '.join(views)}")
        return 0
    selected = [v for v in args.views.split(",") if v] if args.views else None
    # Only a run over every view becomes what the servers export: a partial one
    # would make the other views' series (and their alerts) disappear.
    result = run_monitor(config, current=args.current, reference=args.reference, views=selected,
                         now=args.now, store=selected is None)
    print(render_table(result))
    for path, why in sorted(result.run.skipped_files.items()):
        print(f"quiver: warning: skipped profile file {path}: {why}", file=sys.stderr)
    if selected is None:
        _push_metrics(config, result)
    if args.action == "report":
        from quiver_server.monitoring.report import render_report

        out = Path(args.out)
        out.write_text(render_report(result, config.project), encoding="utf-8")
        print(f"Wrote {out}")
    return DRIFT_EXIT_CODE if args.fail_on_drift and result.drifted else 0


def render_table(result: MonitorResult) -> str:
    run = result.run
    lines = [f"Current: {run.current} since {run.current_start.ToDatetime().isoformat()}Z; "
             f"reference: {run.reference}"]
    header = f"{'feature':<44} {'status':<16} {'psi':>8} {'js':>7} {'null now':>9} {'null ref':>9}"
    lines += [header, "-" * len(header)]
    for report in result.features:
        d = report.drift
        lines.append(
            f"{d.feature_view + ':' + d.feature:<44} {_STATUS.get(d.status, '?'):<16} "
            f"{d.psi:>8.3f} {d.jensen_shannon:>7.3f} {d.current_null_rate:>9.2%} "
            f"{d.reference_null_rate:>9.2%}"
        )
    drifted = result.drifted
    lines.append(f"{len(drifted)} of {len(result.features)} features drifted"
                 + (": " + ", ".join(f"{r.drift.feature_view}:{r.drift.feature}" for r in drifted)
                    if drifted else "."))
    return "\n".join(lines)


def _push_metrics(config: QuiverConfig, result: MonitorResult) -> None:
    """Push the run's gauges to the Pushgateway when one is configured (CronJob runs)."""
    gateway = config.telemetry.metrics.pushgateway
    if not gateway or not config.telemetry.metrics.enabled:
        return
    from prometheus_client import CollectorRegistry, push_to_gateway

    from quiver_server.monitoring.metrics import RunCollector

    registry = CollectorRegistry()
    registry.register(RunCollector(result.run))
    try:
        push_to_gateway(gateway, job="quiver-monitor", registry=registry,
                        grouping_key={"project": config.project})
    except OSError as exc:
        print(f"quiver: warning: metrics push to {gateway} failed: {exc}", file=sys.stderr)
