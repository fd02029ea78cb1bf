"""An erased entity leaves no copy behind: not in a merge a killed compaction left
half done (journaled or not), which a later compaction would otherwise put back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver import Entity, FeatureView, Field, Float64, Int64, ParquetSource
from quiver.errors import FailedPreconditionError
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
