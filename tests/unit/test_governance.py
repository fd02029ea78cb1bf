"""Governance pieces without servers: key hashing and matching, dataset versions,
catalog version history, lineage errors, compaction finishing an interrupted run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver import Entity, FeatureService, FeatureView, Field, Float64, Int64, ParquetSource, String
from quiver.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from quiver.registry.v1 import governance_pb2 as gpb
from quiver_server.config import OfflineStoreConfig, QuiverConfig
from quiver_server.governance import compaction
from quiver_server.governance.catalog import Catalog
from quiver_server.governance.datasets import DatasetStore, check_name
from quiver_server.governance.entities import hash_key, load_secret, table_mask
from quiver_server.governance.lineage import Lineage, render_tree
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.progress import RewriteProgress
from quiver_server.registry.store import RegistryStore

user = Entity("user", (Field("user_id", Int64),))
account = Entity("account", (Field("bank", String), Field("number", Int64)))


def view(name: str, features: list[str], description: str = "", **kwargs: Any) -> FeatureView:
    return FeatureView(name=name, entities=[user], schema=[Field(f, Float64) for f in features],
                       source=ParquetSource(name), description=description, **kwargs)


@pytest.fixture
def config(tmp_path: Path) -> QuiverConfig:
    return QuiverConfig(project="p", registry=str(tmp_path / "registry"),
                        offline_store=OfflineStoreConfig(root=str(tmp_path / "data")),
                        repo_path=tmp_path)


def test_keyed_hashes_hide_the_key_and_still_match_it(tmp_path: Path) -> None:
    secret = load_secret(tmp_path / "key")
    assert load_secret(tmp_path / "key") == secret and len(secret) == 32
    assert (tmp_path / "key").stat().st_mode & 0o077 == 0
    one = hash_key(secret, ["user_id"], (42,))
    assert one == hash_key(secret, ["user_id"], (42,))
    assert len(one) == 64
    assert one != hash_key(secret, ["user_id"], (43,))
    assert one != hash_key(b"x" * 32, ["user_id"], (42,))
    assert hash_key(secret, ["k"], (b"\x00",)) != hash_key(secret, ["k"], ("\x00",))


def test_multi_key_entities_match_whole_tuples() -> None:
    table = pa.table({"bank": ["a", "a", "b", None], "number": [1, 2, 1, 1]})
    mask = table_mask(table, ["bank", "number"], [("a", 1), ("b", 1)])
    assert mask.to_pylist() == [True, False, True, False]
    assert table_mask(table, ["bank", "number"], []).to_pylist() == [False] * 4


def test_dataset_versions_are_numbered_and_names_checked(config: QuiverConfig) -> None:
    store = DatasetStore(GovernancePaths.of(config))
    first = store.publish(gpb.TrainingDataset(name="d", registry_version=3))
    second = store.publish(gpb.TrainingDataset(name="d", registry_version=4))
    assert (first.version, second.version) == (1, 2)
    assert store.read("d").version == 2 and store.read("d", 1).registry_version == 3
    assert [d.version for d in store.all()] == [1, 2]
    assert store.pinned_registry_versions() == {3, 4}
    for bad in ("", "../x", "a/b", ".hidden", "x" * 129):
        with pytest.raises(InvalidArgumentError):
            check_name(bad)
    with pytest.raises(NotFoundError):
        store.read("d", 9)
    with pytest.raises(InvalidArgumentError):
        store.read("d", -1)


def test_prune_keeps_versions_pinned_by_datasets(config: QuiverConfig, make_registry: Any) -> None:
    for i in range(5):
        make_registry(config, [user], [view("v", ["a"], description=str(i))])
    registry = RegistryStore(config.registry_path)
    assert registry.prune(1, {2}) == [1, 3, 4]
    assert registry.versions() == [2, 5]


def test_catalog_history_and_uses(config: QuiverConfig, make_registry: Any) -> None:
    stats = view("stats", ["spend", "refunds"], "Card spend", owner="risk@x.com", tags={"tier": "gold"})
    service = FeatureService(name="model", features=[stats[["spend"]]])
    make_registry(config, [user], [stats], [service])
    changed = view("stats", ["spend", "refunds"], "Card spend, daily", owner="risk@x.com",
                   tags={"tier": "gold"})
    make_registry(config, [user], [changed, view("gone", ["x"])], [service])
    make_registry(config, [user], [changed], [service])
    catalog = Catalog(GovernancePaths.of(config), RegistryStore(config.registry_path))
    entry = catalog.entry("feature_view", "stats")
    assert [(v.registry_version, v.change) for v in entry.versions] == [(1, "created"), (2, "changed")]
    assert list(entry.used_by) == ["feature_service:model"]
    assert catalog.entry("feature", "stats:refunds").used_by == []
    assert [(e.kind, e.name) for e in catalog.search("GOLD daily")] == [("feature_view", "stats")]
    assert catalog.search("tier=gold")[0].matched == ["tag"]
    assert catalog.search("user", kinds=["entity"])[0].used_by == ["feature_view:stats"]
    with pytest.raises(NotFoundError):
        catalog.entry("feature_view", "gone")
    with pytest.raises(InvalidArgumentError) as bad:
        catalog.search("x", kinds=["table"])
    assert bad.value.violations[0].field == "kinds[0]"


def test_lineage_names_and_errors(config: QuiverConfig, make_registry: Any) -> None:
    same = view("same", ["a"])
    snapshot = make_registry(config, [user], [same], [FeatureService(name="same", features=[same])])
    lineage = Lineage(GovernancePaths.of(config), snapshot)
    with pytest.raises(FailedPreconditionError) as ambiguous:
        lineage.of("same")
    assert ambiguous.value.reason == "AMBIGUOUS_NAME"
    tree = render_tree(lineage.of("same", "feature_service"))
    assert tree.splitlines()[:2] == ["feature service same", "└── feature view same  (features: a)"]
    with pytest.raises(NotFoundError):
        lineage.of("nothing")
    with pytest.raises(InvalidArgumentError):
        lineage.of("")


def test_compaction_finishes_a_run_interrupted_before_its_swap(
    config: QuiverConfig, make_registry: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    stats = FeatureView(name="stats", entities=[user], schema=[Field("spend", Float64)],
                        source=ParquetSource("stats"), ttl=timedelta(0))
    snapshot = make_registry(config, [user], [stats])
    base = Path(config.offline_root) / "stats"
    base.mkdir(parents=True)
    for i in range(5):
        pq.write_table(pa.table({
            "user_id": [i, 1], "event_timestamp": pa.array([0, 0], pa.timestamp("us", tz="UTC")),
            "spend": [float(i), float(i)],
        }), base / f"part-{i}.parquet")
    before = pa.concat_tables([pq.read_table(p) for p in sorted(base.glob("*.parquet"))])
    paths = GovernancePaths.of(config)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(compaction, "_finish", crash)
    with pytest.raises(SystemExit):
        compaction.compact_view(paths, snapshot, "stats", "test")
    assert len(list(paths.compactions_pending.glob("*.json"))) == 1
    assert len(list(base.glob(".compact-*"))) == 1  # merged, not yet swapped in
    monkeypatch.undo()
    result = compaction.compact_view(paths, snapshot, "stats", "test")
    files = sorted(base.iterdir())
    assert [f.name for f in files] == ["part-0.parquet"] and result.groups == []
    assert pq.read_table(files[0]).equals(before)
    assert not list(paths.compactions_pending.glob("*.json"))


def test_erasure_of_a_two_key_entity_from_a_single_file_source(
    config: QuiverConfig, make_registry: Any,
) -> None:
    balances = FeatureView(name="balances", entities=[account], schema=[Field("balance", Float64)],
                           source=ParquetSource("balances.parquet"))
    snapshot = make_registry(config, [account], [balances])
    root = Path(config.offline_root)
    root.mkdir(parents=True)
    (root / "beside").mkdir()
    (root / "beside" / ".keep.erasing-x").write_text("not ours to delete")
    when = pa.array([0, 0, 0], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"bank": ["a", "a", "b"], "number": [1, 2, 1], "event_timestamp": when,
                             "balance": [1.0, 2.0, 3.0]}), root / "balances.parquet")
    from quiver_server.governance.erasure import Eraser

    events: list[RewriteProgress] = []
    result = Eraser(GovernancePaths.of(config), snapshot, None, "test", progress=events.append).erase(
        {"bank": ["a"], "number": [1]}
    )
    assert (result.files_rewritten, result.rows_removed) == (1, 1)
    assert events == [RewriteProgress("erasure", "balances", 0, 1), RewriteProgress("erasure", "balances", 1, 1)]
    assert pq.read_table(root / "balances.parquet").to_pydict()["number"] == [2, 1]
    assert (root / "beside" / ".keep.erasing-x").exists()
    with pytest.raises(InvalidArgumentError) as bad:
        Eraser(GovernancePaths.of(config), snapshot, None, "test").erase({"bank": ["a"]})
    assert "no feature view is keyed by" in bad.value.message
