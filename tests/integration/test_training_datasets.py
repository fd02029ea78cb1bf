"""Training datasets through a real Flight server: recorded, pulled again cell for cell,
refused with FAILED_PRECONDITION naming what changed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver import Entity, FeatureService, FeatureView, Field, Float64, Int64, ParquetSource
from quiver._training_client import DatasetSpine, OfflineSpine, TrainingClient
from quiver.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from quiver_server.config import QuiverConfig
from quiver_server.governance.datasets import DatasetStore
from quiver_server.governance.paths import GovernancePaths
from quiver_server.monitoring.storage import ProfileStore
from quiver_server.offline.append import append_history

T0 = datetime(2024, 6, 1, tzinfo=UTC)
US = pa.timestamp("us", tz="UTC")

user = Entity("user", (Field("user_id", Int64),))
stats = FeatureView(
    name="stats", entities=[user], schema=[Field("spend", Float64), Field("txns", Int64)],
    source=ParquetSource("stats", created_timestamp_field="created"), ttl=timedelta(days=5),
    owner="risk@example.com",
)
profile = FeatureView(
    name="profile", entities=[user], schema=[Field("age", Int64)], source=ParquetSource("profile"),
)
model = FeatureService(name="model", features=[stats, profile])


def times(seconds: Any) -> pa.Array:
    base = int(T0.timestamp()) * 1_000_000
    return pa.array(base + np.asarray(seconds, np.int64) * 1_000_000, pa.int64()).cast(US)


def write_history(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "stats").mkdir(parents=True)
    for part in range(3):
        n = 200
        events = times(rng.integers(0, 86_400 * 4, n))
        pq.write_table(pa.table({
            "user_id": rng.integers(0, 30, n), "event_timestamp": events, "created": events,
            "spend": rng.random(n) * 100, "txns": rng.integers(0, 9, n),
        }), root / "stats" / f"part-{part}.parquet")
    (root / "profile").mkdir()
    pq.write_table(pa.table({
        "user_id": np.arange(30), "event_timestamp": times(np.zeros(30)),
        "age": rng.integers(18, 90, 30),
    }), root / "profile" / "data.parquet")


def spine(rows: int = 120, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "user_id": rng.integers(0, 32, rows),
        "event_timestamp": times(rng.integers(0, 86_400 * 5, rows)),
        "label": rng.random(rows) < 0.3,
    })


@pytest.fixture
def repo(tmp_path: Path, make_config: Callable[..., QuiverConfig],
         apply_objects: Callable[..., Any]) -> QuiverConfig:
    config = make_config(tmp_path)
    write_history(Path(config.offline_root))
    apply_objects(config, [user], [stats, profile], [model])
    return config


def push_offline(config: QuiverConfig, user_id: int, seconds: int, spend: float) -> None:
    rows = pa.table({
        "user_id": [user_id], "event_timestamp": times([seconds]), "created": times([seconds]),
        "spend": [spend], "txns": [1],
    })
    append_history(config.offline_root, stats, rows)


def test_a_dataset_is_recorded_and_pulled_again_cell_for_cell(repo: QuiverConfig, flight_server: Any) -> None:
    labelled = spine()
    with flight_server(repo) as location, TrainingClient(location) as client:
        created = client.create_training_dataset(
            "fraud_train", labelled, feature_service="model", description="first cut",
            tags={"team": "risk"}, partition_rows=50,
        )
        assert (created.name, created.version) == ("fraud_train", 1)
        direct = client.get_training_set(labelled, feature_service="model")
        assert created.table.equals(direct)
        record = created.record
        assert record.feature_service == "model" and record.row_count == labelled.num_rows
        assert list(record.feature_refs) == ["stats:spend", "stats:txns", "profile:age"]
        assert record.registry_version == 1 and record.created_by == "anonymous"
        assert {h.feature_view for h in record.histories} == {"stats", "profile"}
        assert [f.path for f in record.histories[0].files] == [
            "part-0.parquet", "part-1.parquet", "part-2.parquet"
        ]
        assert record.spine.path.startswith("_datasets/fraud_train/")
        assert dict(record.tags) == {"team": "risk"}
        assert record.profile == "fraud_train.v1"
        assert "fraud_train.v1" in ProfileStore(repo.offline_root).training_sets()

        # A push (a new file, an event that would win for user 5) and a new
        # registry version do not change what the dataset pulls.
        hit = labelled.filter(pa.compute.equal(labelled["user_id"], 5))
        assert hit.num_rows
        first = pa.compute.min(hit["event_timestamp"]).as_py()
        push_offline(repo, 5, int((first - T0).total_seconds()), 12345.0)
        again = client.get_training_dataset("fraud_train", 1, partition_rows=17)
        assert again.table.equals(created.table)
        assert again.version == 1
        fresh = client.get_training_set(labelled, feature_service="model")
        assert not fresh.equals(created.table)

        second = client.create_training_dataset("fraud_train", labelled, features=["profile:age"])
        assert second.version == 2
        assert client.get_training_dataset("fraud_train").table.equals(second.table)


def test_a_dataset_outlives_its_uploaded_spine(repo: QuiverConfig, flight_server: Any, fake_clock: Any) -> None:
    with flight_server(repo, clock=fake_clock) as location, TrainingClient(location) as client:
        created = client.create_training_dataset("kept", spine(), feature_service="model")
        fake_clock.now += 10 * 86_400  # the uploaded spine expired long ago
        assert client.get_training_dataset("kept").table.equals(created.table)


def test_offline_spines_are_kept_too(repo: QuiverConfig, flight_server: Any) -> None:
    path = Path(repo.offline_root) / "spines" / "s.parquet"
    path.parent.mkdir()
    pq.write_table(spine(), path)
    with flight_server(repo) as location, TrainingClient(location) as client:
        created = client.create_training_dataset("offline", OfflineSpine("s.parquet"),
                                                 features=["stats:spend"])
        path.unlink()
        assert client.get_training_dataset("offline", 1).table.equals(created.table)


def test_a_kept_spine_feeds_a_new_training_set(repo: QuiverConfig, flight_server: Any) -> None:
    labelled = spine()
    with flight_server(repo) as location, TrainingClient(location) as client:
        client.create_training_dataset("base", labelled, features=["profile:age"])
        table = client.get_training_set(DatasetSpine("base"), feature_service="model")
        assert table.equals(client.get_training_set(labelled, feature_service="model"))
        with pytest.raises(NotFoundError):
            client.get_training_set(DatasetSpine("base", 2), feature_service="model")


def test_compaction_or_a_changed_file_is_named(repo: QuiverConfig, flight_server: Any) -> None:
    with flight_server(repo) as location, TrainingClient(location) as client:
        client.create_training_dataset("ds", spine(), feature_service="model")
        part = Path(repo.offline_root) / "stats" / "part-1.parquet"
        table = pq.read_table(part)
        pq.write_table(table.slice(1), part)
        with pytest.raises(FailedPreconditionError) as caught:
            client.get_training_dataset("ds", 1)
        assert "stats" in caught.value.message and "part-1.parquet" in caught.value.message
        assert caught.value.reason == "DATASET_NOT_REPRODUCIBLE"
        status = DatasetStore(GovernancePaths.of(repo)).status(
            DatasetStore(GovernancePaths.of(repo)).read("ds", 1)
        )
        assert not status.reproducible


def test_bad_names_and_unknown_datasets(repo: QuiverConfig, flight_server: Any) -> None:
    with flight_server(repo) as location, TrainingClient(location) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            client.create_training_dataset("../x", spine(), feature_service="model")
        assert caught.value.violations[0].field == "name"
        with pytest.raises(NotFoundError):
            client.get_training_dataset("nope")
        client.create_training_dataset("one", spine(), feature_service="model")
        with pytest.raises(NotFoundError) as missing:
            client.get_training_dataset("one", 7)
        assert "has no version 7" in missing.value.message


def test_a_pruned_registry_version_is_named(
    repo: QuiverConfig, flight_server: Any, apply_objects: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from quiver_server.cli import main as cli_main
    from quiver_server.registry.store import RegistryStore

    with flight_server(repo) as location, TrainingClient(location) as client:
        created = client.create_training_dataset("pinned", spine(), feature_service="model")
        for _ in range(3):
            apply_objects(repo, [user], [stats, profile], [model])
        # `quiver registry prune` keeps the version the dataset pins...
        (Path(repo.repo_path) / "quiver.yaml").write_text(
            f"project: test\nregistry: {repo.registry_path}\noffline_store: {{root: {repo.offline_root}}}\n"
        )
        assert cli_main(["--repo", str(repo.repo_path), "registry", "prune", "--keep", "1"]) == 0
        assert "pinned by training datasets" in capsys.readouterr().out
        assert RegistryStore(repo.registry_path).versions() == [1, 4]
        assert client.get_training_dataset("pinned").table.equals(created.table)
        # ...and a version removed anyway is named.
        RegistryStore(repo.registry_path).prune(1)
        with pytest.raises(FailedPreconditionError) as caught:
            client.get_training_dataset("pinned")
        assert "registry version 1 was pruned" in caught.value.message
