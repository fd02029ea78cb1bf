"""Privacy erasure online and offline: planned training sets exclude the entity at
once, the history loses exactly its rows, a kill midway loses nothing and a rerun
completes it; over gRPC, and from the command line in a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from governed import FILES, history_rows, spine, write_repo

from quiver import OnlineClient, TrainingClient
from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver_server.cli import main as cli_main
from quiver_server.config import QuiverConfig
from quiver_server.governance.datasets import DatasetStore
from quiver_server.governance.paths import GovernancePaths
from quiver_server.materialize import materialize_range
from quiver_server.serving.server import create_server

USER = 7


@pytest.fixture
def repo(tmp_path: Path) -> QuiverConfig:
    config = write_repo(tmp_path / "repo")
    end = datetime(2024, 6, 10, tzinfo=UTC)
    materialize_range(config, end - timedelta(days=30), end, progress=False)
    return config


def others(table: pa.Table) -> pa.Table:
    """Rows of every user but USER, sorted, to compare history before and after."""
    kept = table.filter(pc.not_equal(table["user_id"], USER))
    return kept.sort_by([(c, "ascending") for c in kept.column_names])


def user_rows(table: pa.Table) -> int:
    return int(pc.sum(pc.equal(table["user_id"], USER)).as_py() or 0)


def run_cli(config: QuiverConfig, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quiver_server.cli", "--repo", str(config.repo_path), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_line(process: subprocess.Popen[str], text: str) -> str:
    """Read the process's stderr until a line holding `text` (its readiness signal)."""
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"the process ended without {text!r}: {''.join(seen)}")


def stats_files(config: QuiverConfig) -> list[Path]:
    base = Path(config.offline_root) / "stats"
    return sorted(p for p in base.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("where", ["after:1", "before_swap:1"])
def test_erasure_survives_a_kill_midway_and_later_training_sets_exclude_the_entity(
    repo: QuiverConfig, flight_server: Any, where: str,
) -> None:
    before = history_rows(repo)
    assert user_rows(before) == 10
    labelled = spine(users=12)
    with flight_server(repo) as location, TrainingClient(location) as client:
        with_user = client.create_training_dataset("with_user", labelled, feature_service="model")
        assert pc.sum(pc.equal(labelled["user_id"], USER)).as_py() > 0
        assert with_user.table.filter(pc.equal(labelled["user_id"], USER))["spend"].null_count == 0
        without = client.create_training_dataset(
            "without_user", labelled.filter(pc.not_equal(labelled["user_id"], USER)),
            feature_service="model",
        )

        process = run_cli(repo, "delete-entity", f"user_id={USER}", "--offline",
                          env={"QUIVER_ERASURE_PAUSE": where})
        try:
            wait_for_line(process, "erasure paused")
            # The request is recorded and one file (or none) is rewritten: the entity's
            # rows still exist in history, yet a training set planned now has none.
            assert user_rows(history_rows(repo)) > 0
            planned = client.get_training_set(labelled, feature_service="model")
            mine = planned.filter(pc.equal(planned["user_id"], USER))
            assert mine["spend"].null_count == mine.num_rows > 0
            assert mine["age"].null_count == mine.num_rows
            rest = planned.filter(pc.not_equal(planned["user_id"], USER))
            assert rest.equals(with_user.table.filter(pc.not_equal(labelled["user_id"], USER)))
        finally:
            process.send_signal(signal.SIGKILL)
            process.communicate()  # reaps it and closes its pipes

        # Killed midway: every file readers see is whole (a rewrite not yet renamed
        # stays under a hidden name), and nothing of anyone else is lost.
        hidden = [p for p in stats_files(repo) if p.name.startswith(".")]
        assert len(hidden) == (1 if where.startswith("before_swap") else 0)
        for path in stats_files(repo):
            if path not in hidden:
                pq.read_metadata(path)
        assert others(history_rows(repo)).equals(others(before))
        assert user_rows(history_rows(repo)) > 0  # not done yet

        rerun = run_cli(repo, "delete-entity", f"user_id={USER}", "--offline")
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err
        assert "Erased from" in out

        after = history_rows(repo)
        assert user_rows(after) == 0
        assert others(after).equals(others(before))
        assert not any(p.name.startswith(".") for p in Path(repo.offline_root, "stats").rglob("*"))
        assert user_rows(history_rows(repo, "profile")) == 0

        later = client.get_training_set(labelled, feature_service="model")
        assert later.filter(pc.equal(later["user_id"], USER))["spend"].null_count == \
            pc.sum(pc.equal(labelled["user_id"], USER)).as_py()

        with pytest.raises(FailedPreconditionError) as caught:
            client.get_training_dataset("with_user", with_user.version)
        assert "removed entities of its spine" in caught.value.message
        assert "history file 'part-1.parquet' was rewritten by erasure e-" in caught.value.message
        # The files it read lost only rows of an entity its spine never had: same rows.
        assert client.get_training_dataset("without_user", without.version).table.equals(without.table)

    paths = GovernancePaths.of(repo)
    store = DatasetStore(paths)
    marked = store.status(store.read("with_user", 1))
    assert not marked.reproducible and marked.erasure_ids
    kept = pa.ipc.open_file(Path(repo.offline_root) / store.read("with_user", 1).spine.path).read_all()
    assert user_rows(kept) == 0  # the kept spine lost the entity's rows too
    log = [json.loads(line) for line in paths.erasure_log.read_text().splitlines()]
    events = [r["event"] for r in log]
    assert events.count("requested") == 1 and "completed" in events
    assert sum(r["event"] == "file_rewritten" and r["view"] == "stats" for r in log) == FILES // 2
    assert all(str(USER) not in json.dumps(r.get("key_hashes", [])) or len(r["key_hashes"][0]) == 64
               for r in log)
    assert not list(paths.erasures_pending.glob("*.json"))

    again = run_cli(repo, "delete-entity", f"user_id={USER}", "--offline")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "0 history row(s) in 0 file(s)" in out  # idempotent


@pytest.fixture
def serving(repo: QuiverConfig) -> Iterator[OnlineClient]:
    app, port = create_server(repo, "127.0.0.1", 0)
    with app, OnlineClient(f"127.0.0.1:{port}", timeout=60) as client:
        yield client


def test_delete_entities_offline_over_grpc(
    repo: QuiverConfig, serving: OnlineClient, capsys: pytest.CaptureFixture[str],
) -> None:
    before = history_rows(repo)
    assert serving.get_online_features(features=["stats:spend"], entities={"user_id": [USER]}) \
        .statuses("spend") != ["NOT_FOUND"]
    result = serving.delete_entities({"user_id": [USER]}, offline=True)
    assert result.erasure_id.startswith("e-")
    assert sorted(result.feature_views) == ["profile", "stats"]
    assert result.online_rows_deleted == 2
    assert (result.files_rewritten, result.offline_rows_deleted) == (FILES // 2 + 1, 11)
    assert serving.get_online_features(features=["stats:spend"], entities={"user_id": [USER]}) \
        .statuses("spend") == ["NOT_FOUND"]
    assert user_rows(history_rows(repo)) == 0
    assert others(history_rows(repo)).equals(others(before))
    assert serving.delete_entities({"user_id": [USER]}) == 0
    assert cli_main(["--repo", str(repo.repo_path), "erasures", "list"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("e-")]
    assert [line.split("\t")[:2] for line in listed] == [
        [result.erasure_id, "requested"], [result.erasure_id, "completed"],
    ]
    assert "anonymous" in listed[0] and "views profile, stats" in listed[0]
    with pytest.raises(InvalidArgumentError) as caught:
        serving.delete_entities({"user_id": ["seven"]}, offline=True)
    assert caught.value.violations[0].field == "entities.user_id"
