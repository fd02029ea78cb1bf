"""Governance commands of the `quiver` command line.

    quiver datasets list [NAME] [--json]       training dataset versions and whether they reproduce
    quiver datasets show NAME [VERSION] [--json]
    quiver lineage NAME [--kind KIND] [--json] where data comes from and what uses it
    quiver search TEXT... [--kind KIND] [--json]   the catalog
    quiver compact VIEW [--target-mb N]        merge a view's small history files
    quiver erasures list [--json] | resume     the erasure log; complete interrupted erasures
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC
from typing import Any

from google.protobuf import json_format, message

from quiver.registry.v1 import governance_pb2 as gpb
from quiver_server.config import QuiverConfig
from quiver_server.governance.paths import GovernancePaths


def add_commands(sub: Any) -> None:
    """Register the governance subcommands on the main parser's subparsers."""
    p = sub.add_parser("datasets", help="list or show training datasets")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("name", nargs="?", help="dataset name (required for show)")
    p.add_argument("version", nargs="?", type=int, default=0, help="version for show (default: newest)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("lineage", help="where a view, service or dataset's data comes from and what uses it")
    p.add_argument("name", help="feature view, feature service, or training dataset (NAME or NAME:VERSION)")
    p.add_argument("--kind", choices=["feature_view", "feature_service", "training_dataset"])
    p.add_argument("--json", action="store_true", help="print the tree as JSON")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("search", help="search the catalog by name, description, owner and tag")
    p.add_argument("text", nargs="+")
    p.add_argument("--kind", action="append", default=[],
                   choices=["entity", "feature_view", "feature", "feature_service", "training_dataset"],
                   help="only this kind (repeatable)")
    p.add_argument("--limit", type=int, default=0, help="most entries (default: 100)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("compact", help="merge a feature view's small history files")
    p.add_argument("view")
    p.add_argument("--target-mb", type=_megabytes, default=128.0,
                   help="files this large are left alone; merged files grow to about this (default 128)")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("erasures", help="the erasure log; complete interrupted erasures")
    p.add_argument("action", choices=["list", "resume"])
    p.add_argument("--json", action="store_true", help="print the log as JSON lines")
    p.set_defaults(func=cmd_erasures)


def _megabytes(text: str) -> float:
    """A positive, finite number of megabytes (argparse reports anything else as a usage error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of megabytes")
    return value


def _dump(msg: message.Message) -> str:
    return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=2)


def cmd_datasets(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.governance.datasets import DatasetStore, label
    from quiver_server.registry.store import RegistryStore

    store = DatasetStore(GovernancePaths.of(config))
    registry_versions = set(RegistryStore(config.registry_path).versions())
    if args.action == "show":
        if not args.name:
            raise SystemExit("quiver: error: datasets show needs a NAME")
        record = store.read(args.name, args.version)
        info = gpb.TrainingDatasetInfo(dataset=record, status=store.status(record, registry_versions))
        if args.json:
            print(_dump(info))
        else:
            print(_describe(info))
        return 0
    if args.name:
        store.read(args.name)
    infos = [gpb.TrainingDatasetInfo(dataset=r, status=store.status(r, registry_versions))
             for r in store.all(args.name or "")]
    if args.json:
        print(json.dumps([json.loads(_dump(i)) for i in infos], indent=2))
        return 0
    if not infos:
        print("No training datasets.")
    for info in infos:
        record = info.dataset
        state = "reproducible" if info.status.reproducible else "NOT reproducible"
        print(f"{label(record)}\t{record.created_at.ToDatetime(tzinfo=UTC).isoformat()}\t"
              f"{record.created_by}\t{record.row_count} rows\t"
              f"{record.feature_service or f'{len(record.feature_refs)} features'}\t{state}")
    return 0


def _describe(info: gpb.TrainingDatasetInfo) -> str:
    record, status = info.dataset, info.status
    lines = [
        f"training dataset {record.name}, version {record.version}",
        f"  created      {record.created_at.ToDatetime(tzinfo=UTC).isoformat()} by {record.created_by}",
        f"  project      {record.project}, registry version {record.registry_version}",
        f"  rows         {record.row_count}",
        f"  features     {', '.join(record.feature_refs)}"
        + (f" (feature service {record.feature_service})" if record.feature_service else ""),
        f"  spine        {record.spine.path} (sha256 {record.spine.sha256[:16]}..., "
        f"columns {', '.join(record.spine.columns)})",
    ]
    if record.transform_version:
        lines.append(f"  transforms   parameter set version {record.transform_version}")
    if record.profile:
        lines.append(f"  profile      training_set:{record.profile}")
    if record.description:
        lines.append(f"  description  {record.description}")
    if record.tags:
        lines.append(f"  tags         {', '.join(f'{k}={v}' for k, v in sorted(record.tags.items()))}")
    for history in record.histories:
        lines.append(f"  history      {history.feature_view}: {len(history.files)} file(s) under "
                     f"{history.source_path}, fingerprint {history.fingerprint}")
    lines.append(f"  status       {'reproducible' if status.reproducible else 'NOT reproducible'}")
    lines.extend(f"               - {reason}" for reason in status.reasons)
    return "\n".join(lines)


def cmd_lineage(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.governance.lineage import Lineage, render_tree, to_json
    from quiver_server.registry.store import RegistryStore

    registry = RegistryStore(config.registry_path)
    lineage = Lineage(GovernancePaths.of(config), registry.latest(), set(registry.versions()))
    node = lineage.of(args.name, args.kind or "")
    print(to_json(node) if args.json else render_tree(node))
    return 0


def cmd_search(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.governance.catalog import Catalog
    from quiver_server.registry.store import RegistryStore

    catalog = Catalog(GovernancePaths.of(config), RegistryStore(config.registry_path))
    entries = catalog.search(" ".join(args.text), args.kind, args.limit)
    if args.json:
        print(json.dumps([json.loads(_dump(e)) for e in entries], indent=2))
        return 0
    if not entries:
        print("Nothing matches.")
    for entry in entries:
        print(f"{entry.kind.replace('_', ' ')} {entry.name}")
        if entry.description:
            print(f"    {entry.description}")
        details = []
        if entry.owner:
            details.append(f"owner {entry.owner}")
        if entry.tags:
            details.append("tags " + ", ".join(f"{k}={v}" for k, v in sorted(entry.tags.items())))
        if entry.versions:
            details.append("versions " + ", ".join(
                f"v{v.registry_version} {v.change}" for v in entry.versions))
        if details:
            print(f"    {'; '.join(details)}")
        if entry.used_by:
            print(f"    used by {', '.join(entry.used_by)}")
    return 0


def cmd_compact(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.governance.compaction import compact_view
    from quiver_server.governance.progress import RewriteBars
    from quiver_server.governance.who import local_principal
    from quiver_server.registry.store import RegistryStore

    with RewriteBars() as bars:
        result = compact_view(
            GovernancePaths.of(config), RegistryStore(config.registry_path).latest(), args.view,
            local_principal(), target_bytes=int(args.target_mb * (1 << 20)), progress=bars,
        )
    print(f"{result.feature_view}: {result.files_before} file(s) -> {result.files_after} "
          f"({len(result.groups)} merged group(s), compaction {result.compaction_id})")
    return 0


def cmd_erasures(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.governance.files import read_lines

    paths = GovernancePaths.of(config)
    if args.action == "resume":
        from quiver_server.governance.erasure import Eraser
        from quiver_server.governance.progress import RewriteBars
        from quiver_server.governance.who import local_principal
        from quiver_server.online.factory import open_online_store
        from quiver_server.registry.store import RegistryStore

        store = open_online_store(config)
        try:
            with RewriteBars() as bars:
                results = Eraser(paths, RegistryStore(config.registry_path).latest(), store,
                                 local_principal(), progress=bars).resume()
        finally:
            store.close()
        for result in results:
            print(f"Completed erasure {result.erasure_id}: {result.files_rewritten} file(s) rewritten, "
                  f"{result.rows_removed} history row(s) removed")
        if not results:
            print("No erasure was pending.")
        return 0
    records = read_lines(paths.erasure_log)
    if args.json:
        for record in records:
            print(json.dumps(record, sort_keys=True))
        return 0
    if not records:
        print("No erasures.")
    for record in records:
        event = record.get("event")
        if event == "requested":
            print(f"{record['erasure_id']}\trequested\t{record['at']}\t{record['by']}\t"
                  f"{record['entities']} entities\tviews {', '.join(record['views'])}")
        elif event == "completed":
            print(f"{record['erasure_id']}\tcompleted\t{record['at']}\t{record['by']}\t"
                  f"{record['files_rewritten']} files rewritten, {record['rows_removed']} rows removed")
    return 0
