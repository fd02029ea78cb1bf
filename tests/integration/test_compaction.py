"""Compaction merges small pushed files without changing any training set, including
ties broken by source order; datasets pinned to merged files say so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from governed import history_rows, spine, times, write_repo

from quiver import TrainingClient
from quiver.errors import FailedPreconditionError
from quiver_flight.pit import PointInTimeEngine
from quiver_server.cli import main as cli_main
from quiver_server.config import QuiverConfig
from quiver_server.governance.compaction import compact_view
from quiver_server.governance.paths import GovernancePaths
from quiver_server.offline.append import append_history
from quiver_server.registry.store import RegistryStore


def push_many(config: QuiverConfig, pushes: int = 60) -> None:
    """Small offline pushes; many share (user, event, created) with an earlier one."""
    view = RegistryStore(config.registry_path).latest().feature_view("stats")
    rng = np.random.default_rng(11)
    for i in range(pushes):
        users = rng.integers(0, 12, 3)
        # Half the pushes repeat one instant: ties that only source order breaks.
        seconds = np.full(3, 86_400 * 4 + 60) if i % 2 else rng.integers(0, 86_400 * 5, 3)
        when = times(seconds)
        append_history(config.offline_root, view, pa.table({
            "user_id": users, "event_timestamp": when, "created": when,
            "spend": np.full(3, float(i)), "txns": np.full(3, i),
        }))


def files(config: QuiverConfig) -> list[Path]:
    return sorted(p for p in (Path(config.offline_root) / "stats").rglob("*.parquet")
                  if not p.name.startswith("."))


def join(config: QuiverConfig, labelled: pa.Table) -> pa.Table:
    snapshot = RegistryStore(config.registry_path).latest()
    refs = snapshot.resolve(feature_service="model")
    return PointInTimeEngine(config.offline_root).join_table(labelled, refs)


def test_compaction_keeps_every_training_set_and_the_order_that_breaks_ties(tmp_path: Path) -> None:
    config = write_repo(tmp_path / "repo")
    push_many(config)
    labelled = pa.concat_tables([spine(400, users=12), pa.table({
        "user_id": np.arange(12), "event_timestamp": times(np.full(12, 86_400 * 4 + 60)),
        "label": np.zeros(12, bool),
    })])
    before_files, before_rows = files(config), history_rows(config)
    before = join(config, labelled)
    tied = before.slice(400)
    assert tied["txns"].null_count < 12 and max(tied["txns"].to_pylist(), key=lambda v: v or 0) > 1

    assert cli_main(["--repo", str(config.repo_path), "compact", "stats"]) == 0
    after_files = files(config)
    assert len(after_files) < len(before_files) / 4
    assert set(after_files) <= set(before_files)  # merged files keep the first file's name
    assert history_rows(config).equals(before_rows)  # every row, in the same order
    assert join(config, labelled).equals(before)
    # Nothing left to merge: a second run changes nothing.
    result = compact_view(GovernancePaths.of(config), RegistryStore(config.registry_path).latest(),
                          "stats", "test")
    assert result.groups == [] and files(config) == after_files


def test_a_dataset_pinned_to_merged_files_names_the_compaction(
    tmp_path: Path, flight_server: Any,
) -> None:
    config = write_repo(tmp_path / "repo")
    push_many(config, 8)
    with flight_server(config) as location, TrainingClient(location) as client:
        created = client.create_training_dataset("before_compaction", spine(), feature_service="model")
        assert cli_main(["--repo", str(config.repo_path), "compact", "stats"]) == 0
        with pytest.raises(FailedPreconditionError) as caught:
            client.get_training_dataset("before_compaction", created.version)
        assert "merged by compaction" in caught.value.message
        fresh = client.get_training_set(spine(), feature_service="model")
        assert fresh.equals(created.table)  # the data is the same, only the files changed


def test_small_targets_and_unknown_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_repo(tmp_path / "repo")
    push_many(config, 4)
    count = len(files(config))
    assert cli_main(["--repo", str(config.repo_path), "compact", "stats", "--target-mb", "0.000001"]) == 0
    assert len(files(config)) == count  # every file is over the target: nothing merged
    assert cli_main(["--repo", str(config.repo_path), "compact", "nope"]) == 1
    assert "feature view 'nope' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["nan", "inf", "-1", "0", "many"])
def test_a_target_size_that_is_not_a_positive_number_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str,
) -> None:
    config = write_repo(tmp_path / "repo")
    with pytest.raises(SystemExit) as exited:
        cli_main(["--repo", str(config.repo_path), "compact", "stats", "--target-mb", bad])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--target-mb" in err and "positive number of megabytes" in err and "Traceback" not in err
