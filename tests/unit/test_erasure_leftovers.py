"""Erasure leaves nothing behind and breaks nothing: no copy in a merge a killed
compaction left half done (which a later compaction would put back), no join that
reads files an erasure swapped meanwhile, no recorded request with a key that
cannot be matched (every later plan would fail on it)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver import Entity, FeatureView, Field, Float64, Int64, ParquetSource, String
from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver_server.config import OfflineStoreConfig, QuiverConfig
from quiver_server.governance import compaction
from quiver_server.governance.erasure import Eraser
from quiver_server.governance.paths import GovernancePaths
from quiver_server.registry.snapshot import Snapshot

user = Entity("user", (Field("user_id", Int64),))
ERASED = 1


@pytest.fixture
def config(tmp_path: Path) -> QuiverConfig:
    return QuiverConfig(project="p", registry=str(tmp_path / "registry"),
                        offline_store=OfflineStoreConfig(root=str(tmp_path / "data")),
                        repo_path=tmp_path)


def small_files(config: QuiverConfig, make_registry: Any) -> tuple[Snapshot, Path]:
    stats = FeatureView(name="stats", entities=[user], schema=[Field("spend", Float64)],
                        source=ParquetSource("stats"), ttl=timedelta(0))
    snapshot = make_registry(config, [user], [stats])
    base = Path(config.offline_root) / "stats"
    base.mkdir(parents=True)
    for i in range(5):
        pq.write_table(pa.table({
            "user_id": [i + 10, ERASED], "event_timestamp": pa.array([0, 0], pa.timestamp("us", tz="UTC")),
            "spend": [float(i), float(i)],
        }), base / f"part-{i}.parquet")
    return snapshot, base


def users_on_disk(base: Path) -> set[int]:
    """Every user id in every Parquet file under `base`, hidden ones included."""
    found: set[int] = set()
    for path in base.rglob("*"):
        if path.is_file():
            found.update(pq.read_table(path, columns=["user_id"])["user_id"].to_pylist())
    return found


@pytest.mark.parametrize("killed", ["before_swap", "before_journal"])
def test_an_interrupted_compaction_does_not_bring_an_erased_entity_back(
    config: QuiverConfig, make_registry: Any, monkeypatch: pytest.MonkeyPatch, killed: str,
) -> None:
    snapshot, base = small_files(config, make_registry)
    paths = GovernancePaths.of(config)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise SystemExit("killed")

    # A kill with the merged file written: journaled (next run swaps it in) or not yet.
    monkeypatch.setattr(compaction, "_finish" if killed == "before_swap" else "write_durable", crash)
    with pytest.raises(SystemExit):
        compaction.compact_view(paths, snapshot, "stats", "test")
    monkeypatch.undo()
    assert ERASED in users_on_disk(base)

    Eraser(paths, snapshot, None, "test").erase({"user_id": [ERASED]})
    assert ERASED not in users_on_disk(base)  # no hidden merge holds it either
    compaction.compact_view(paths, snapshot, "stats", "test")
    assert ERASED not in users_on_disk(base)
    assert users_on_disk(base) == {10, 11, 12, 13, 14}


def test_a_join_reading_history_an_erasure_rewrites_meanwhile_never_shifts_rows(
    config: QuiverConfig, make_registry: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quiver_flight import pit
    from quiver_flight.pit import PointInTimeEngine

    stats = FeatureView(name="stats", entities=[user], schema=[Field("spend", Float64)],
                        source=ParquetSource("stats"), ttl=timedelta(0))
    snapshot = make_registry(config, [user], [stats])
    base = Path(config.offline_root) / "stats"
    base.mkdir(parents=True)
    when = pa.timestamp("us", tz="UTC")
    for i, users in enumerate([[ERASED, ERASED, 2], [3, 4], [9, 9, 9, 9]]):
        pq.write_table(pa.table({
            "user_id": users, "event_timestamp": pa.array([0] * len(users), when),
            "spend": [float(u) for u in users],
        }), base / f"part-{i}.parquet")
    build_index = pit.build_index
    erased: list[bool] = []

    def index_then_erase(source: Any) -> Any:
        index = build_index(source)
        if not erased:  # the erasure swaps a file in after the index was read
            Eraser(GovernancePaths.of(config), snapshot, None, "test").erase({"user_id": [ERASED]})
            erased.append(True)
        return index

    monkeypatch.setattr(pit, "build_index", index_then_erase)
    labelled = pa.table({"user_id": [2, 3, 4], "event_timestamp": pa.array([10, 10, 10], when)})
    # A budget too small to keep feature columns: rows are gathered from the files.
    engine = PointInTimeEngine(config.offline_root, cache_bytes=1)
    try:
        joined = engine.join_table(labelled, snapshot.resolve(["stats:spend"]))
    except FailedPreconditionError as exc:
        assert exc.reason == "HISTORY_CHANGED"
    else:
        assert joined["spend"].to_pylist() == [2.0, 3.0, 4.0]
    assert erased


@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1, 10**30])
def test_a_key_out_of_range_is_refused_before_an_erasure_is_recorded(
    config: QuiverConfig, make_registry: Any, bad: int, capsys: pytest.CaptureFixture[str],
) -> None:
    from quiver_server.cli import main as cli_main

    snapshot, _ = small_files(config, make_registry)
    paths = GovernancePaths.of(config)
    with pytest.raises(InvalidArgumentError) as caught:
        Eraser(paths, snapshot, None, "test").erase({"user_id": [bad]})
    assert caught.value.violations[0].field == "entities.user_id"
    (config.repo_path / "quiver.yaml").write_text(
        f"project: p\nregistry: {config.registry_path}\noffline_store: {{root: {config.offline_root}}}\n"
        f"online_store: {{type: sqlite, path: {config.repo_path / 'online.db'}}}\n"
    )
    with pytest.raises(SystemExit) as exited:
        cli_main(["--repo", str(config.repo_path), "delete-entity", f"user_id={bad}", "--offline"])
    assert "user_id is a int64 key" in str(exited.value.code)
    # Nothing pending: a recorded request with such a key would fail every later plan.
    assert not list(paths.erasures_pending.glob("*.json"))
    Eraser(paths, snapshot, None, "test").erase({"user_id": [ERASED]})


def test_a_string_key_that_is_not_unicode_text_is_refused(
    config: QuiverConfig, make_registry: Any,
) -> None:
    named = Entity("named", (Field("name", String),))
    view = FeatureView(name="by_name", entities=[named], schema=[Field("spend", Float64)],
                       source=ParquetSource("by_name"))
    snapshot = make_registry(config, [named], [view])
    with pytest.raises(InvalidArgumentError) as caught:
        Eraser(GovernancePaths.of(config), snapshot, None, "test").erase({"name": ["\udcff"]})
    assert caught.value.violations[0].field == "entities.name"
    assert not list(GovernancePaths.of(config).erasures_pending.glob("*.json"))


def test_records_a_kill_left_half_written_are_skipped(
    config: QuiverConfig, make_registry: Any,
) -> None:
    """write_durable's temporary files (".tmp-<random>-<name>") in the pending directories,
    torn or whole, are not requests: planners, erasures and compactions go on."""
    from quiver_server.governance.erasure import PendingErasures

    snapshot, base = small_files(config, make_registry)
    paths = GovernancePaths.of(config)
    for directory in (paths.erasures_pending, paths.compactions_pending):
        directory.mkdir(parents=True)
        (directory / ".tmp-0123456789abcdef-e-20260101T000000-aaaaaaaa.json").write_text('{"erasure_id": "e-')
    (paths.erasures_pending / ".tmp-1123456789abcdef-e-20260101T000000-bbbbbbbb.json").write_text(
        '{"erasure_id": "e-20260101T000000-bbbbbbbb", "requested_at": "2026-01-01T00:00:00+00:00", '
        '"requested_by": "x", "views": ["stats"], "entities": {"user_id": [{"i": 12}]}}')
    assert PendingErasures(paths).requests() == []
    compaction.compact_view(paths, snapshot, "stats", "test")
    Eraser(paths, snapshot, None, "test").erase({"user_id": [ERASED]})
    assert users_on_disk(base) == {10, 11, 12, 13, 14}
