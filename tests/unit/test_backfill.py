"""quiver backfill: history computed by a view's transformation, versioned, serving online and offline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver.errors import DefinitionError, FailedPreconditionError, InvalidArgumentError
from quiver_flight.pit import PointInTimeEngine
from quiver_server.backfill import backfill
from quiver_server.cli import main
from quiver_server.config import QuiverConfig, load_config
from quiver_server.materialize import materialize_range
from quiver_server.online.base import ViewRead, ViewTable
from quiver_server.online.keys import encode_keys
from quiver_server.online.sqlite import SqliteOnlineStore
from quiver_server.registry.store import RegistryStore
from quiver_server.repo import apply

D0 = datetime(2024, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
US = pa.timestamp("us", tz="UTC")

DEFINITIONS = '''
from datetime import timedelta
from quiver import BatchTransformation, Entity, FeatureView, Field, Float64, Int64, ParquetSource, String

user = Entity(name="user", join_keys=[Field("user_id", Int64)])
transactions = ParquetSource("raw/transactions", timestamp_field="ts")

spend = FeatureView(
    name="user_spend",
    entities=[user],
    schema=[Field("amount_x", Float64), Field("city", String)],
    source=BatchTransformation(
        inputs={{"transactions": transactions}},
        sql="""SELECT user_id, ts AS event_timestamp, amount * {factor} AS amount_x, upper(city) AS city
               FROM transactions WHERE amount > 0""",
    ),
    ttl=timedelta(days=30),
)
daily = FeatureView(
    name="user_daily",
    entities=[user],
    schema=[Field("cents", Int64)],
    source=BatchTransformation(inputs={{"transactions": transactions}},
                               function="_transforms:to_cents"),
    online=False,
)
'''

TRANSFORMS = '''
import pyarrow as pa
import pyarrow.compute as pc


def to_cents(batches):
    for batch in batches:
        yield pa.record_batch({
            "user_id": batch.column("user_id"),
            "event_timestamp": batch.column("ts"),
            "cents": pc.multiply(batch.column("amount"), 100).cast(pa.int64()),
        })
'''


def write_repo(root: Path, factor: int = 2) -> QuiverConfig:
    root.mkdir(exist_ok=True)
    (root / "quiver.yaml").write_text("project: shop\n")
    (root / "features.py").write_text(DEFINITIONS.format(factor=factor))
    (root / "_transforms.py").write_text(TRANSFORMS)
    return load_config(root, env={})


def write_transactions(config: QuiverConfig) -> pa.Table:
    """Four days of raw transactions, a file per day (times at 6 h steps)."""
    rows = []
    for day in range(4):
        for step in range(4):
            for user in (1, 2, 3):
                rows.append({"user_id": user, "ts": D0 + day * DAY + step * timedelta(hours=6)
                             + timedelta(minutes=user),
                             "amount": float((day * 4 + step + user) % 5), "city": f"c{user}{day}"})
    table = pa.Table.from_pylist(rows, schema=pa.schema(
        [("user_id", pa.int64()), ("ts", US), ("amount", pa.float64()), ("city", pa.string())]
    ))
    directory = Path(config.offline_root) / "raw" / "transactions"
    directory.mkdir(parents=True, exist_ok=True)
    for day in range(4):
        pq.write_table(table.slice(day * 12, 12), directory / f"day={day}.parquet")
    return table


def expected_history(raw: pa.Table, start: datetime, end: datetime, factor: int) -> list[tuple]:
    rows = [r for r in raw.to_pylist() if start <= r["ts"] < end and r["amount"] > 0]
    return sorted((r["ts"], r["user_id"], r["amount"] * factor, r["city"].upper()) for r in rows)


def history_rows(config: QuiverConfig, view: str) -> list[tuple]:
    snapshot = RegistryStore(config.registry_path).latest()
    path = Path(config.offline_root) / snapshot.feature_view(view).source.path
    table = pq.read_table(path)
    return [(r["event_timestamp"], r["user_id"], r["amount_x"], r["city"]) for r in table.to_pylist()]


def online_values(config: QuiverConfig, users: list[int]) -> tuple[list, dict]:
    table = RegistryStore(config.registry_path).latest().view_table("user_spend")
    keys = encode_keys(table.view.join_keys, [users])
    with SqliteOnlineStore(config.resolve("data/online.db")) as store:
        [read] = store.read([ViewRead(table, keys, ["amount_x", "city"])])
    return read.event_ts, read.values


@pytest.fixture
def config(tmp_path: Path) -> QuiverConfig:
    config = write_repo(tmp_path / "repo")
    apply(config)
    return config


def test_backfill_serves_offline_and_online_and_repeats_change_nothing(config: QuiverConfig) -> None:
    raw = write_transactions(config)
    registry = RegistryStore(config.registry_path)
    first = backfill(config, "user_spend", D0, D0 + 2 * DAY)
    assert (first.version, first.new_version, first.windows) == (1, True, [(D0, D0 + 2 * DAY)])
    assert history_rows(config, "user_spend") == expected_history(raw, D0, D0 + 2 * DAY, 2)
    # Online: the version was materialized into its own storage before the switch.
    assert first.materialized is not None and first.materialized.entities == 3
    events, values = online_values(config, [1, 2, 3])
    last = {u: max(r for r in expected_history(raw, D0, D0 + 2 * DAY, 2) if r[1] == u) for u in (1, 2, 3)}
    assert values["amount_x"] == [last[u][2] for u in (1, 2, 3)]
    assert registry.latest().watermark("user_spend") == D0 + 2 * DAY
    # Offline: a training set reads the computed history.
    snapshot = registry.latest()
    refs = snapshot.resolve(features=["user_spend:amount_x", "user_spend:city"])
    spine = pa.table({"user_id": [1, 2, 9],
                      "event_timestamp": pa.array([D0 + DAY, D0 + 3 * DAY, D0 + DAY], US)})
    got = PointInTimeEngine(config.offline_root).join_table(spine, refs)
    want_1 = max(r for r in expected_history(raw, D0, D0 + DAY, 2) if r[1] == 1)
    assert got["amount_x"].to_pylist() == [want_1[2], last[2][2], None]

    # The same window again: no files, no registry version.
    version, files = registry.latest_version(), sorted((Path(config.offline_root) / "_backfill").rglob("*"))
    again = backfill(config, "user_spend", D0, D0 + 2 * DAY)
    assert again.windows == [] and again.rows == 0
    assert registry.latest_version() == version
    assert sorted((Path(config.offline_root) / "_backfill").rglob("*")) == files
    # An overlapping window computes only what is missing.
    more = backfill(config, "user_spend", D0 + DAY, D0 + 3 * DAY)
    assert (more.version, more.new_version, more.windows) == (1, False, [(D0 + 2 * DAY, D0 + 3 * DAY)])
    assert history_rows(config, "user_spend") == expected_history(raw, D0, D0 + 3 * DAY, 2)
    [result] = materialize_range(config, D0 + 2 * DAY, D0 + 3 * DAY, ["user_spend"])
    assert result.entities == 3


def test_a_changed_transformation_switches_offline_and_online_together(config: QuiverConfig) -> None:
    raw = write_transactions(config)
    backfill(config, "user_spend", D0, D0 + 2 * DAY)
    _, before = online_values(config, [1])
    write_repo(config.repo_path, factor=10)
    apply(config)
    # Applied but not backfilled: both paths still read version 1.
    assert RegistryStore(config.registry_path).latest().view_table("user_spend").generation == 1
    assert online_values(config, [1])[1] == before
    switched = backfill(config, "user_spend", D0, D0 + 2 * DAY)
    assert (switched.version, switched.new_version) == (2, True)
    table = RegistryStore(config.registry_path).latest().view_table("user_spend")
    assert (table.generation, table.stored_as, table.view.source.path) == (
        2, "user_spend-v2", "_backfill/user_spend/v2"
    )
    assert history_rows(config, "user_spend") == expected_history(raw, D0, D0 + 2 * DAY, 10)
    _, after = online_values(config, [1])
    assert after["amount_x"] == [before["amount_x"][0] * 5]
    # The previous version stays on disk for tickets planned on it.
    assert (Path(config.offline_root) / "_backfill" / "user_spend" / "v1").is_dir()


def test_function_transformations_and_the_cli(config: QuiverConfig, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_transactions(config)
    repo = str(config.repo_path)
    assert main(["--repo", repo, "backfill", "user_daily", "2024-03-01", "2024-03-03"]) == 0
    assert "into history version 1" in capsys.readouterr().out
    snapshot = RegistryStore(config.registry_path).latest()
    table = pq.read_table(Path(config.offline_root) / snapshot.feature_view("user_daily").source.path)
    want = sorted((r["user_id"], r["ts"], int(r["amount"] * 100)) for r in raw.to_pylist()
                  if r["ts"] < D0 + 2 * DAY)
    got = sorted((r["user_id"], r["event_timestamp"], r["cents"]) for r in table.to_pylist())
    assert got == want
    assert main(["--repo", repo, "backfill", "user_daily", "2024-03-01", "2024-03-03"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_bad_transformations_are_refused_at_apply_and_backfill(tmp_path: Path) -> None:
    config = write_repo(tmp_path / "repo")
    write_transactions(config)
    features = config.repo_path / "features.py"
    features.write_text(features.read_text().replace("upper(city)", "upper(town)"))
    with pytest.raises(DefinitionError, match=r"features.py: feature view 'user_spend'.*town"):
        apply(config)
    features.write_text(DEFINITIONS.format(factor=2).replace("_transforms:to_cents", "_nowhere:f"))
    with pytest.raises(DefinitionError, match=r"features.py: feature view 'user_daily'.*_nowhere"):
        apply(config)
    features.write_text(DEFINITIONS.format(factor=2).replace("amount_x, upper", "amount_y, upper"))
    with pytest.raises(DefinitionError, match="no column 'amount_x'"):
        apply(config)
    features.write_text(DEFINITIONS.format(factor=2))
    apply(config)
    with pytest.raises(InvalidArgumentError, match="must be before end"):
        backfill(config, "user_spend", D0, D0)
    with pytest.raises(FailedPreconditionError, match="quiver backfill user_spend"):
        PointInTimeEngine(config.offline_root).locate(
            [RegistryStore(config.registry_path).latest().feature_view("user_spend")]
        )


def test_an_erased_entity_stays_out_of_every_later_backfill(config: QuiverConfig) -> None:
    """Backfills recompute from raw data, which still holds an erased entity: its rows
    are left out of every window and version computed after the erasure, online too."""
    write_transactions(config)
    repo = str(config.repo_path)
    backfill(config, "user_spend", D0, D0 + 2 * DAY)
    assert main(["--repo", repo, "delete-entity", "user_id=2", "--offline"]) == 0
    assert {r[1] for r in history_rows(config, "user_spend")} == {1, 3}
    # A later window of the same version.
    backfill(config, "user_spend", D0 + 2 * DAY, D0 + 3 * DAY)
    assert {r[1] for r in history_rows(config, "user_spend")} == {1, 3}
    # A new version, computed in full and switched to online.
    write_repo(config.repo_path, factor=10)
    apply(config)
    switched = backfill(config, "user_spend", D0, D0 + 4 * DAY)
    assert switched.new_version
    assert {r[1] for r in history_rows(config, "user_spend")} == {1, 3}
    events, values = online_values(config, [1, 2, 3])
    assert events[1] is None and values["amount_x"][1] is None
    assert values["amount_x"][0] is not None


def test_an_erasure_reaches_every_version_on_disk(config: QuiverConfig) -> None:
    """The previous version stays on disk for tickets planned on it: an erasure rewrites it too."""
    write_transactions(config)
    backfill(config, "user_spend", D0, D0 + 2 * DAY)
    write_repo(config.repo_path, factor=10)
    apply(config)
    backfill(config, "user_spend", D0, D0 + 2 * DAY)
    assert main(["--repo", str(config.repo_path), "delete-entity", "user_id=2", "--offline"]) == 0
    for version in ("v1", "v2"):
        table = pq.read_table(Path(config.offline_root) / "_backfill" / "user_spend" / version)
        assert 2 not in table["user_id"].to_pylist(), version


def test_erased_entities_stay_out_by_pending_record_and_by_projected_hash(config: QuiverConfig) -> None:
    """A pending erasure (killed before it completed) is honoured by its keys; a completed
    one given more key columns than the view has, by the hashes of the view's own keys."""
    from quiver_server.governance.erasure import Eraser, ErasureRequest
    from quiver_server.governance.files import write_durable
    from quiver_server.governance.paths import GovernancePaths

    write_transactions(config)
    paths = GovernancePaths.of(config)
    snapshot = RegistryStore(config.registry_path).latest()
    Eraser(paths, snapshot, None, "local:test").erase(
        {"user_id": [2], "merchant_id": [7]}, ["user_spend"]
    )
    pending = ErasureRequest("e-pending", "2026-01-01T00:00:00+00:00", "local:test",
                             ("user_spend",), {"user_id": [3]})
    write_durable(paths.erasures_pending / "e-pending.json", pending.to_json())
    backfill(config, "user_spend", D0, D0 + 2 * DAY)
    assert {r[1] for r in history_rows(config, "user_spend")} == {1}
    # Without the key the log's hashes were made with, nothing can be told: refused.
    paths.erasure_key.unlink()
    with pytest.raises(FailedPreconditionError, match="governance/erasures/key"):
        backfill(config, "user_spend", D0 + 2 * DAY, D0 + 3 * DAY)


def test_an_erasure_that_read_the_registry_before_a_switch_deletes_what_is_served(
    config: QuiverConfig,
) -> None:
    from quiver_server.governance.erasure import Eraser
    from quiver_server.governance.paths import GovernancePaths

    write_transactions(config)
    backfill(config, "user_spend", D0, D0 + 2 * DAY)
    before_switch = RegistryStore(config.registry_path).latest()
    write_repo(config.repo_path, factor=10)
    apply(config)
    backfill(config, "user_spend", D0, D0 + 2 * DAY)
    with SqliteOnlineStore(config.resolve("data/online.db")) as store:
        Eraser(GovernancePaths.of(config), before_switch, store, "local:test").erase({"user_id": [2]})
    events, values = online_values(config, [1, 2])
    assert events[1] is None and values["amount_x"][0] is not None


BLOCKING = '''
import threading

import pyarrow as pa
import pyarrow.compute as pc

entered = threading.Event()
release = threading.Event()


def to_cents(batches):
    for batch in batches:
        first = pc.min(batch.column("ts")).as_py()
        if first is not None and first.day == 1:  # the first day's window waits
            entered.set()
            release.wait()
        yield pa.record_batch({
            "user_id": batch.column("user_id"),
            "event_timestamp": batch.column("ts"),
            "cents": pc.multiply(batch.column("amount"), 100).cast(pa.int64()),
        })
'''


def test_backfills_of_one_view_run_one_at_a_time(
    config: QuiverConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two backfills of a changed view at once (two Jobs of the chart) both start the new
    version: the second one deleted what the first was writing. Now the second waits."""
    import sys
    import threading

    write_transactions(config)
    backfill(config, "user_daily", D0, D0 + 2 * DAY)
    (config.repo_path / "_blocking.py").write_text(BLOCKING)
    features = config.repo_path / "features.py"
    features.write_text(features.read_text().replace("_transforms:to_cents", "_blocking:to_cents"))
    sys.modules.pop("_blocking", None)
    apply(config)
    module = sys.modules["_blocking"]
    results: dict[str, object] = {}

    def run(name: str, start: datetime, end: datetime) -> None:
        try:
            results[name] = backfill(config, "user_daily", start, end)
        except Exception as exc:  # the assertion below names it
            results[name] = exc

    first = threading.Thread(target=run, args=("first", D0, D0 + DAY))
    first.start()
    assert module.entered.wait(60)
    second = threading.Thread(target=run, args=("second", D0 + DAY, D0 + 2 * DAY))
    second.start()
    while "waiting for another backfill" not in capsys.readouterr().out and "second" not in results:
        second.join(0.05)
    module.release.set()
    first.join()
    second.join()
    assert all(not isinstance(r, Exception) for r in results.values()), results
    history = RegistryStore(config.registry_path).latest().proto.view_meta["user_daily"].history
    assert history.version == 2 and len(history.windows) == 1
    table = pq.read_table(Path(config.offline_root) / "_backfill" / "user_daily" / "v2")
    assert table.num_rows == 24  # both days: 12 raw rows each


def test_a_new_version_after_a_backfill_died_before_switching_starts_clean(
    config: QuiverConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill killed between materializing its new version and the registry commit left
    that version's online storage written; the next one must not serve those rows."""
    from quiver import PushTarget
    from quiver_server.push import push

    write_transactions(config)
    # Pushed before the first backfill: the view's own online storage (version 0).
    with SqliteOnlineStore(config.resolve("data/online.db")) as store:
        push(store, RegistryStore(config.registry_path).latest().view_table("user_spend"),
             config.offline_root, pa.table({"user_id": [1], "event_timestamp": pa.array([D0], US),
                                            "amount_x": [1.0], "city": ["C"]}),
             PushTarget.ONLINE, now=D0)
    backfill(config, "user_spend", D0, D0 + 2 * DAY)
    write_repo(config.repo_path, factor=10)
    apply(config)

    def killed(self: RegistryStore, change: object) -> None:
        raise KeyboardInterrupt("killed before the switch")

    with monkeypatch.context() as patch:
        patch.setattr(RegistryStore, "commit", killed)
        with pytest.raises(KeyboardInterrupt):
            backfill(config, "user_spend", D0, D0 + 2 * DAY)
    features = config.repo_path / "features.py"
    features.write_text(features.read_text().replace("WHERE amount > 0", "WHERE amount > 0 AND user_id <> 3"))
    apply(config)
    switched = backfill(config, "user_spend", D0, D0 + 2 * DAY)
    assert switched.new_version
    events, values = online_values(config, [1, 3])
    assert values["amount_x"][0] is not None
    assert events[1] is None, "user 3 is in no row of the version served"
    # An erasure deletes from the online storage of every version, abandoned ones too.
    assert main(["--repo", str(config.repo_path), "delete-entity", "user_id=1", "--offline"]) == 0
    latest = RegistryStore(config.registry_path).latest().view_table("user_spend")
    assert latest.generation == 3
    keys = encode_keys(latest.view.join_keys, [[1]])
    with SqliteOnlineStore(config.resolve("data/online.db")) as store:
        for generation in (0, 1, 2, 3):
            table = ViewTable(latest.project, latest.view, latest.bin_names, generation)
            [read] = store.read([ViewRead(table, keys, ["amount_x"])])
            assert read.event_ts == [None], generation


def test_a_materialization_that_wrote_the_replaced_version_leaves_the_new_watermark(
    config: QuiverConfig,
) -> None:
    """A materialization planned on version 1 that ends after a backfill switched to version 2
    wrote version 1's online storage: its window end is not version 2's watermark."""
    import threading

    write_transactions(config)
    backfill(config, "user_spend", D0, D0 + 3 * DAY)
    started, release = threading.Event(), threading.Event()

    def hold(progress: object) -> None:
        if getattr(progress, "phase", None) == "start":
            started.set()
            release.wait()

    run = threading.Thread(target=materialize_range, args=(config, D0, D0 + 3 * DAY, ["user_spend"]),
                           kwargs={"progress": hold})
    run.start()
    assert started.wait(60)
    write_repo(config.repo_path, factor=10)
    apply(config)
    backfill(config, "user_spend", D0, D0 + 2 * DAY)
    release.set()
    run.join()
    snapshot = RegistryStore(config.registry_path).latest()
    assert snapshot.view_table("user_spend").generation == 2
    assert snapshot.watermark("user_spend") == D0 + 2 * DAY


def test_a_changed_function_body_is_a_changed_transformation(config: QuiverConfig) -> None:
    """The function is named by its import path; what it computes is its code."""
    import sys

    raw = write_transactions(config)
    backfill(config, "user_daily", D0, D0 + DAY)
    transforms = config.repo_path / "_transforms.py"
    transforms.write_text(transforms.read_text().replace("100", "1000"))
    sys.modules.pop("_transforms", None)  # a new process imports the new code
    try:
        again = backfill(config, "user_daily", D0, D0 + DAY)
    finally:
        sys.modules.pop("_transforms", None)  # later tests import their repo's own
    assert (again.version, again.new_version) == (2, True)
    snapshot = RegistryStore(config.registry_path).latest()
    table = pq.read_table(Path(config.offline_root) / snapshot.feature_view("user_daily").source.path)
    assert sorted(table["cents"].to_pylist()) == sorted(
        int(r["amount"] * 1000) for r in raw.to_pylist() if r["ts"] < D0 + DAY
    )


def test_an_erasure_while_a_backfill_computes_reaches_its_output(config: QuiverConfig) -> None:
    """The raw rows were read before the erasure was requested: the output is filtered again
    when it is moved into place."""
    import sys
    import threading

    from quiver_server.governance.erasure import Eraser
    from quiver_server.governance.paths import GovernancePaths

    write_transactions(config)
    (config.repo_path / "_blocking.py").write_text(BLOCKING)
    features = config.repo_path / "features.py"
    features.write_text(features.read_text().replace("_transforms:to_cents", "_blocking:to_cents"))
    sys.modules.pop("_blocking", None)
    apply(config)
    module = sys.modules["_blocking"]
    results: list[object] = []
    run = threading.Thread(target=lambda: results.append(backfill(config, "user_daily", D0, D0 + DAY)))
    run.start()
    assert module.entered.wait(60)
    Eraser(GovernancePaths.of(config), RegistryStore(config.registry_path).latest(), None,
           "local:test").erase({"user_id": [2]}, ["user_daily"])
    module.release.set()
    run.join()
    assert results and results[0].rows == 8  # 12 raw rows of the day, user 2's 4 left out
    table = pq.read_table(Path(config.offline_root) / "_backfill" / "user_daily" / "v1")
    assert sorted(set(table["user_id"].to_pylist())) == [1, 3]
