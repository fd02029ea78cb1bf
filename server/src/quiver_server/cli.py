"""The `quiver` command line.

    quiver [--repo DIR] apply | plan | materialize START END | materialize-incremental END
                        | serve | serve-flight | registry history | registry show [VERSION]
                        | registry prune [--keep N] | registry repair
                        | delete-entity KEY=VALUE... [--views V,...] [--offline]
                        | monitor [run | report --out FILE | training-sets]
                        | fit SERVICE --spine PATH | transforms list | transforms show SERVICE
                        | datasets list|show | lineage NAME | search TEXT | compact VIEW
                        | erasures list|resume
    quiver init-demo DIR
    quiver auth token NAME [--principal P] [--groups G,...]

DIR is the feature repo (default: $QUIVER_REPO or the current directory).
Times are ISO 8601; a time without an offset is UTC; `now` is accepted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from google.protobuf import text_format

from quiver.errors import QuiverError
from quiver_server.config import QuiverConfig, load_config
from quiver_server.governance.cli import add_commands as add_governance_commands
from quiver_server.transforms.commands import register as register_transform_commands

if TYPE_CHECKING:
    from quiver_server.monitoring.sinks import ProfileWriter
    from quiver_server.registry.store import RegistryStore


def parse_time(text: str) -> datetime:
    """ISO 8601 or `now`; naive times are UTC."""
    if text == "now":
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time; use ISO 8601 like 2024-05-01 or 2024-05-01T12:00:00+00:00, or 'now'"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _views(text: str | None) -> list[str] | None:
    return [v for v in text.split(",") if v] if text else None


def cmd_apply(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.repo import apply

    plan, snapshot = apply(config)
    print(plan.render())
    if snapshot is not None:
        print(f"Applied: registry version {snapshot.version} at {config.registry_path}")
    return 0


def cmd_plan(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.repo import plan

    print(plan(config).render())
    return 0


def _profile_writer(config: QuiverConfig) -> ProfileWriter | None:
    """Where materialization stores the profiles of what it writes (None: monitoring off)."""
    if not config.monitoring.enabled:
        return None
    from quiver_server.monitoring.sinks import ProfileWriter
    from quiver_server.monitoring.storage import ProfileStore

    return ProfileWriter(ProfileStore(config.offline_root))


def cmd_materialize(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.materialize import materialize_range
    from quiver_server.progress import MaterializeBars
    from quiver_server.telemetry.job import run_materialization

    if args.start >= args.end:
        raise SystemExit(f"quiver: error: START ({args.start}) must be before END ({args.end})")
    profiles = _profile_writer(config)
    with MaterializeBars() as bars:
        run_materialization(config, lambda progress: materialize_range(
            config, args.start, args.end, _views(args.views), progress=progress,
            profiles=profiles,
        ), draw=bars)
    return 0


def cmd_materialize_incremental(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.materialize import materialize_incremental
    from quiver_server.progress import MaterializeBars
    from quiver_server.telemetry.job import run_materialization

    profiles = _profile_writer(config)
    with MaterializeBars() as bars:
        run_materialization(config, lambda progress: materialize_incremental(
            config, args.end, _views(args.views), progress=progress, profiles=profiles,
        ), draw=bars)
    return 0


def cmd_monitor(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.monitoring.cli import monitor_command

    return monitor_command(config, args)


def cmd_serve(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.serving.server import serve

    serve(config, args.host, args.port, args.workers)
    return 0


def cmd_serve_flight(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_flight.server import serve

    serve(config, args.host, args.port, health_port=args.health_port)
    return 0


def cmd_registry(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.registry.store import RegistryStore

    store = RegistryStore(config.registry_path)
    if args.action == "prune":
        from quiver_server.governance.datasets import DatasetStore
        from quiver_server.governance.paths import GovernancePaths

        pinned = DatasetStore(GovernancePaths.of(config)).pinned_registry_versions()
        removed = store.prune(args.keep, pinned)
        print(f"Removed {len(removed)} registry version(s); kept the newest {args.keep} that verify"
              + (f" and {len(pinned)} pinned by training datasets." if pinned else "."))
        return 0
    if args.action == "repair":
        set_aside = store.repair()
        for version, problem in sorted(set_aside.items()):
            print(f"v{version}\tset aside as v{version:08d}.pb.corrupt\t{problem}")
        good = store.latest_good_version()
        print(f"{len(set_aside)} bad version(s) set aside; the newest version is now "
              f"{good or 'none'}.")
        return 0
    if args.action == "history":
        return _print_history(store)
    version = args.version or store.latest_version()
    print(text_format.MessageToString(store.read(version)), end="")
    return 0


def _print_history(store: RegistryStore) -> int:
    """One line per version, including those that do not verify; 1 if any does not."""
    rows = {v: "" for v in store.versions()}
    rows.update({v: "set aside" for v in store.set_aside()})
    bad = 0
    for version, state in sorted(rows.items()):
        if state:
            print(f"v{version}\tSET ASIDE\tv{version:08d}.pb.corrupt (did not verify)")
            continue
        problem = store.problem(version)
        if problem is not None:
            bad += 1
            print(f"v{version}\tDOES NOT VERIFY\tv{version:08d}.pb: {problem}")
            continue
        proto = store.read(version)
        print(
            f"v{version}\t{proto.created_at.ToDatetime(tzinfo=UTC).isoformat()}\t{proto.cause}\t"
            f"{len(proto.entities)} entities, {len(proto.feature_views)} views, "
            f"{len(proto.feature_services)} services"
        )
    if bad:
        print(f"quiver: {bad} version(s) do not verify; servers use the newest that does. "
              f"`quiver registry repair` sets them aside.", file=sys.stderr)
    return 1 if bad else 0


def cmd_delete_entity(config: QuiverConfig, args: argparse.Namespace) -> int:
    from quiver_server.deletion import delete_entities
    from quiver_server.online.factory import open_online_store
    from quiver_server.online.keys import parse_key
    from quiver_server.registry.store import RegistryStore

    registry = RegistryStore(config.registry_path)
    snapshot = registry.latest_good() or registry.latest()  # the latter raises why
    keys = {k.name: k for e in snapshot.entities.values() for k in e.join_keys}
    entities: dict[str, list[object]] = {}
    for item in args.keys:
        name, sep, value = item.partition("=")
        if not sep or name not in keys:
            known = ", ".join(sorted(keys))
            raise SystemExit(f"quiver: error: {item!r}: use KEY=VALUE with a join key ({known})")
        try:
            parsed = parse_key(keys[name], value)
        except ValueError:
            kind = keys[name].dtype.name.lower()
            raise SystemExit(f"quiver: error: {item!r}: {name} is a {kind} key") from None
        entities.setdefault(name, []).append(parsed)
    store = open_online_store(config)
    try:
        if args.offline:
            from quiver_server.governance.erasure import Eraser
            from quiver_server.governance.paths import GovernancePaths
            from quiver_server.governance.progress import RewriteBars
            from quiver_server.governance.who import local_principal

            with RewriteBars() as bars:
                erased = Eraser(GovernancePaths.of(config), snapshot, store, local_principal(),
                                progress=bars).erase(entities, _views(args.views) or ())
            print(
                f"Erased from {', '.join(erased.feature_views)}: {erased.online_rows_deleted} online "
                f"row(s), {erased.rows_removed} history row(s) in {erased.files_rewritten} file(s) "
                f"(erasure {erased.erasure_id})."
            )
            if erased.datasets_affected:
                print(f"No longer reproducible: {', '.join(erased.datasets_affected)}.")
            return 0
        result = delete_entities(store, snapshot, entities, _views(args.views) or ())
    finally:
        store.close()
    print(
        f"Deleted {result.rows_deleted} online row(s) from {', '.join(result.feature_views)}. "
        f"Offline history is not rewritten (--offline erases it)."
    )
    return 0


def cmd_init_demo(args: argparse.Namespace) -> int:
    from quiver_server.demo_repo import write_demo_repo

    repo = write_demo_repo(args.directory, users=args.users, merchants=args.merchants, days=args.days)
    print(f"Wrote the fraud-detection demo repo to {repo}")
    return 0


def cmd_auth_token(args: argparse.Namespace) -> int:
    import yaml

    from quiver_server.auth.static import new_token

    groups = [g for g in (args.groups or "").split(",") if g]
    token, entry = new_token(args.name, args.principal, groups)
    print(f"token (give it to {args.name}; it is not stored anywhere):\n  {token}\n")
    print("entry for the tokens file (auth.static.tokens_file), under 'tokens:':")
    print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quiver", description="Quiver feature store.")
    parser.add_argument(
        "--repo",
        default=os.environ.get("QUIVER_REPO", "."),
        help="feature repo directory holding quiver.yaml (default: $QUIVER_REPO or .)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("apply", help="validate the repo and store a new registry version").set_defaults(
        func=cmd_apply
    )
    sub.add_parser("plan", help="show what apply would change").set_defaults(func=cmd_plan)

    p = sub.add_parser("materialize", help="copy history in [START, END) to the online store")
    p.add_argument("start", type=parse_time, metavar="START")
    p.add_argument("end", type=parse_time, metavar="END")
    p.add_argument("--views", help="comma-separated feature views (default: all online views)")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser(
        "materialize-incremental", help="materialize each view from its watermark up to END"
    )
    p.add_argument("end", type=parse_time, metavar="END")
    p.add_argument("--views", help="comma-separated feature views (default: all online views)")
    p.set_defaults(func=cmd_materialize_incremental)

    p = sub.add_parser("serve", help="serve online features over gRPC")
    p.add_argument("--host", help="listen address (default: serving.host)")
    p.add_argument("--port", type=int, help="port (default: serving.port, 6566)")
    p.add_argument("--workers", type=int, help="server processes on one port (default: serving.workers)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("serve-flight", help="serve training sets over Arrow Flight")
    p.add_argument("--host", help="listen address (default: flight.host)")
    p.add_argument("--port", type=int, help="port (default: flight.port, 8815)")
    p.add_argument("--health-port", type=int,
                   help="port of the grpc.health.v1 service (default: flight.health_port, 8816; "
                        "0 = any free port)")
    p.set_defaults(func=cmd_serve_flight)

    p = sub.add_parser(
        "delete-entity", help="remove entities' online rows (and with --offline, their history)"
    )
    p.add_argument("keys", nargs="+", metavar="KEY=VALUE",
                   help="join key values, e.g. user_id=42 (repeat for several entities)")
    p.add_argument("--views", help="comma-separated feature views (default: every view keyed by them)")
    p.add_argument("--offline", action="store_true",
                   help="also erase them from the offline history (rewrites the files holding them)")
    p.set_defaults(func=cmd_delete_entity)
    add_governance_commands(sub)

    p = sub.add_parser(
        "monitor", help="feature drift and freshness: compute, report, list training sets"
    )
    p.add_argument("action", nargs="?", choices=["run", "report", "training-sets"], default="run",
                   help="run (default): compute and store drift; report: also write HTML; "
                        "training-sets: list stored training-set profiles")
    p.add_argument("--current", choices=["online", "serving", "history"], default="online",
                   help="values to check: written online (default), served, or offline history")
    p.add_argument("--reference", help="trailing or training_set:NAME (default: monitoring.reference)")
    p.add_argument("--views", help="comma-separated feature views (default: all)")
    p.add_argument("--now", type=parse_time, help="end of the current window (default: now)")
    p.add_argument("--out", default="report.html", help="HTML file for report (default: report.html)")
    p.add_argument("--fail-on-drift", action="store_true",
                   help="exit with status 3 when a feature drifted (for CI and scripts)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("init-demo", help="write a sample fraud-detection feature repo")
    p.add_argument("directory")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--merchants", type=int, default=200)
    p.add_argument("--days", type=int, default=14)
    p.set_defaults(func=cmd_init_demo, needs_config=False)

    p = sub.add_parser("auth", help="access control helpers (docs/security.md)")
    auth = p.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    p = auth.add_parser("token", help="make a static bearer token and its tokens-file entry")
    p.add_argument("name", help="the token's name (audit log); the principal by default")
    p.add_argument("--principal", help="principal the token authenticates as (default: NAME)")
    p.add_argument("--groups", help="comma-separated groups of the principal")
    p.set_defaults(func=cmd_auth_token, needs_config=False)

    register_transform_commands(sub)

    p = sub.add_parser("registry", help="inspect stored registry versions")
    p.add_argument("action", choices=["history", "show", "prune", "repair"])
    p.add_argument("version", nargs="?", type=int, help="version for show (default: latest)")
    p.add_argument("--keep", type=int, default=100, help="versions prune keeps (default: 100)")
    p.set_defaults(func=cmd_registry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "needs_config", True) is False:
            return int(args.func(args))
        config = load_config(args.repo)
        return int(args.func(config, args))
    except (QuiverError, OSError) as exc:
        # Expected failures (bad input, a file or store that cannot be used) get one
        # line, whatever the message holds (some carry a library's multi-line text).
        print(f"quiver: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
