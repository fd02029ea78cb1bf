"""Loading, planning and applying feature repos, and registry versioning."""

from __future__ import annotations

from pathlib import Path

import pytest

from quiver.errors import DefinitionError, FailedPreconditionError
from quiver_server.config import QuiverConfig
from quiver_server.registry import framing
from quiver_server.registry.store import RegistryStore
from quiver_server.repo import apply, plan


def edit(repo: Path, old: str, new: str) -> None:
    path = repo / "features.py"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_plan_then_apply_then_nothing_to_do(demo_config: QuiverConfig) -> None:
    first = plan(demo_config)
    assert {(i.kind, i.action) for i in first.items} == {
        ("entity", "add"), ("feature_view", "add"), ("on_demand_feature_view", "add"),
        ("feature_service", "add"), ("permission", "add"),
    }
    assert RegistryStore(demo_config.registry_path).versions() == []
    applied, snapshot = apply(demo_config)
    assert snapshot is not None and snapshot.version == 1
    assert set(snapshot.feature_views) == {"user_transaction_stats", "user_profile", "merchant_stats"}
    again, nothing = apply(demo_config)
    assert again.empty and nothing is None
    assert "no changes" in again.render()


def test_changes_are_planned_and_old_versions_stay_readable(applied_demo: QuiverConfig) -> None:
    repo = applied_demo.repo_path
    edit(repo, "ttl=timedelta(days=7)", "ttl=timedelta(days=3)")
    edit(repo, 'Field("is_high_risk", Bool),', "")
    result = plan(applied_demo)
    assert [str(i) for i in result.items] == ["  ~ feature_view merchant_stats (changed: features, ttl_seconds)"]
    _, snapshot = apply(applied_demo)
    assert snapshot is not None and snapshot.version == 2
    store = RegistryStore(applied_demo.registry_path)
    assert store.versions() == [1, 2]
    old = store.read(1)
    assert any(f.name == "is_high_risk" for v in old.feature_views for f in v.features)
    assert snapshot.feature_view("merchant_stats").ttl_seconds == 3 * 86400


def test_bin_names_are_stable_and_never_reused(applied_demo: QuiverConfig) -> None:
    store = RegistryStore(applied_demo.registry_path)
    before = dict(store.latest().view_table("merchant_stats").bin_names)
    assert all(len(b) <= 15 for b in before.values())
    assert len(set(before.values())) == len(before)
    edit(applied_demo.repo_path, 'Field("is_high_risk", Bool),', "")
    apply(applied_demo)
    edit(applied_demo.repo_path, 'Field("avg_ticket_30d", Float64),',
         'Field("avg_ticket_30d", Float64),\n        Field("is_high_risk", Bool),')
    apply(applied_demo)
    after = store.latest().view_table("merchant_stats").bin_names
    for name in ("merchant_category", "chargeback_rate_30d", "avg_ticket_30d"):
        assert after[name] == before[name]
    # Removed and re-added: a fresh storage name, so old values are never read back.
    assert after["is_high_risk"] != before["is_high_risk"]
    assert after["is_high_risk"] not in before.values()
    # Retyped: a fresh name too.
    edit(applied_demo.repo_path, 'Field("merchant_txn_count_24h", Int64)', 'Field("merchant_txn_count_24h", Float64)')
    apply(applied_demo)
    retyped = store.latest().view_table("merchant_stats").bin_names
    assert retyped["merchant_txn_count_24h"] != after["merchant_txn_count_24h"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("entities=[merchant],", "entities=[Entity(name='shop', join_keys=[Field('shop_id', Int64)])],",
         "features.py: feature view 'merchant_stats' uses entity 'shop', which the repo does not define"),
        ('Field("age", Int32),', 'Field("age", "decimal"),',
         "features.py: field 'age': unknown value type 'decimal'"),
        ('Field("age", Int32),', 'Field("age", Int32),\n        Field("age", Int64),',
         "features.py: feature view 'user_profile' features: 'age' appears more than once"),
        ('user_profile[["credit_score", "is_verified"]]', 'user_profile[["credit_score", "nope"]]',
         "features.py: feature view 'user_profile' has no feature 'nope'"),
        ("from datetime import timedelta", "from datetime import timedelta\n1/0",
         "features.py: failed to load \\(ZeroDivisionError"),
        ('features=[user_transaction_stats, user_profile, merchant_stats],',
         'features=["user_profile:age", "merchant_stats:nope"],',
         "feature service 'fraud_model_v1' selects merchant_stats:nope"),
    ],
)
def test_broken_repo_is_reported_and_registry_untouched(
    applied_demo: QuiverConfig, old: str, new: str, message: str
) -> None:
    store = RegistryStore(applied_demo.registry_path)
    before = store.read(1).SerializeToString()
    edit(applied_demo.repo_path, old, new)
    with pytest.raises(DefinitionError, match=message):
        apply(applied_demo)
    assert store.versions() == [1]
    assert store.read(1).SerializeToString() == before


def test_duplicate_names_across_files(applied_demo: QuiverConfig) -> None:
    (applied_demo.repo_path / "more.py").write_text(
        "from quiver import Entity, Field, String\n"
        "user = Entity(name='user', join_keys=[Field('user_id', String)])\n"
    )
    with pytest.raises(DefinitionError, match="more.py: entity 'user' is defined differently in features.py"):
        plan(applied_demo)


def test_registry_empty_is_a_clear_error(demo_config: QuiverConfig) -> None:
    with pytest.raises(FailedPreconditionError, match="run `quiver apply`"):
        RegistryStore(demo_config.registry_path).latest()


def test_concurrent_commit_retries_on_newer_version(applied_demo: QuiverConfig) -> None:
    store = RegistryStore(applied_demo.registry_path)
    calls = []

    def change(proto: object) -> str:
        calls.append(1)
        if len(calls) == 1:
            # Another writer publishes version 2 while we prepare ours.
            other = store.read(1)
            other.version = 2
            (store.path / "v00000002.pb").write_bytes(framing.encode(other))
        return "test"

    snapshot = store.commit(change)
    assert snapshot is not None and snapshot.version == 3
    assert len(calls) == 2


def test_prune_keeps_the_newest_versions(applied_demo: QuiverConfig, capsys: pytest.CaptureFixture[str]) -> None:
    from quiver_server.cli import main

    store = RegistryStore(applied_demo.registry_path)
    for ttl in (3, 4, 5):
        edit(applied_demo.repo_path, f"ttl=timedelta(days={ttl + 4 if ttl == 3 else ttl - 1})",
             f"ttl=timedelta(days={ttl})")
        apply(applied_demo)
    assert store.versions() == [1, 2, 3, 4]
    assert main(["--repo", str(applied_demo.repo_path), "registry", "prune", "--keep", "2"]) == 0
    assert "Removed 2 registry version(s)" in capsys.readouterr().out
    assert store.versions() == [3, 4]
    assert store.latest().feature_view("merchant_stats").ttl_seconds == 5 * 86400
    with pytest.raises(FailedPreconditionError, match="at least the newest"):
        store.prune(0)
