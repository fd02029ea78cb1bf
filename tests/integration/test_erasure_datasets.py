"""Stored training datasets and an erasure of an entity of their spine: from the
moment it is requested no pull serves the entity's spine rows or a changed table
as the dataset, a dataset created while the erasure starts is still marked and
scrubbed, and a materialization under way does not write the entity back online."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from governed import spine, write_repo

from quiver import TrainingClient
from quiver._training_client import DatasetSpine
from quiver.errors import FailedPreconditionError
from quiver_flight import datasets as flight_datasets
from quiver_server import materialize
from quiver_server.config import QuiverConfig
from quiver_server.governance.datasets import DatasetStore
from quiver_server.governance.erasure import Eraser
from quiver_server.governance.paths import GovernancePaths
from quiver_server.online.base import ViewRead
from quiver_server.online.factory import open_online_store
from quiver_server.online.keys import encode_keys
from quiver_server.registry.store import RegistryStore

USER = 7


def eraser(config: QuiverConfig) -> Eraser:
    return Eraser(GovernancePaths.of(config), RegistryStore(config.registry_path).latest(), None, "test")


def user_rows(table: pa.Table) -> int:
    return int(pc.sum(pc.equal(table["user_id"], USER)).as_py() or 0)


def kept_spine(config: QuiverConfig, name: str) -> pa.Table:
    record = DatasetStore(GovernancePaths.of(config)).read(name)
    return pa.ipc.open_file(Path(config.offline_root) / record.spine.path).read_all()


def test_no_pull_serves_a_spine_an_erasure_is_pending_on(
    tmp_path: Path, flight_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_repo(tmp_path / "repo")
    labelled = spine(users=12)
    assert user_rows(labelled)
    with flight_server(config) as location, TrainingClient(location) as client:
        with_user = client.create_training_dataset("with_user", labelled, feature_service="model")
        without = client.create_training_dataset(
            "without_user", labelled.filter(pc.not_equal(labelled["user_id"], USER)),
            feature_service="model",
        )

        def killed(*args: Any) -> Any:
            raise SystemExit("killed")

        # Killed right after the request was recorded, before any dataset was marked.
        monkeypatch.setattr(Eraser, "_carry_out", killed)
        with pytest.raises(SystemExit):
            eraser(config).erase({"user_id": [USER]})
        monkeypatch.undo()
        [pending] = GovernancePaths.of(config).erasures_pending.glob("*.json")
        erasure_id = pending.stem

        with pytest.raises(FailedPreconditionError) as caught:
            client.get_training_dataset("with_user", with_user.version)
        assert caught.value.reason == "DATASET_NOT_REPRODUCIBLE"
        assert f"erasure {erasure_id} (in progress)" in caught.value.message
        with pytest.raises(FailedPreconditionError) as reused:
            client.get_training_set(DatasetSpine("with_user", with_user.version), feature_service="model")
        assert reused.value.reason == "ERASURE_IN_PROGRESS" and erasure_id in reused.value.message
        # A spine without the entity is untouched by it.
        assert client.get_training_dataset("without_user", without.version).table.equals(without.table)

        eraser(config).resume()
        assert user_rows(kept_spine(config, "with_user")) == 0
        with pytest.raises(FailedPreconditionError) as after:
            client.get_training_dataset("with_user", with_user.version)
        assert "removed entities of its spine" in after.value.message


def test_a_dataset_created_while_an_erasure_starts_is_marked_and_scrubbed(
    tmp_path: Path, flight_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_repo(tmp_path / "repo")
    labelled = spine(users=12)
    pending = GovernancePaths.of(config).erasures_pending
    write_spine = flight_datasets.write_spine
    erasures: list[threading.Thread] = []

    def erase_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # The request lands after the creation found no erasure pending, while it
        # copies the spine, before it records the dataset.
        thread = threading.Thread(target=lambda: eraser(config).erase({"user_id": [USER]}))
        thread.start()
        erasures.append(thread)
        while not list(pending.glob("*.json")):
            threading.Event().wait(0.01)
        return write_spine(*args, **kwargs)

    monkeypatch.setattr(flight_datasets, "write_spine", erase_meanwhile)
    with flight_server(config) as location, TrainingClient(location) as client:
        # Recorded, then refused its first pull: the erasure is under way (or done).
        with pytest.raises(FailedPreconditionError) as caught:
            client.create_training_dataset("racing", labelled, feature_service="model")
        assert caught.value.reason in ("ERASURE_IN_PROGRESS", "STALE_TICKET", "DATASET_NOT_REPRODUCIBLE")
        monkeypatch.undo()
        [thread] = erasures
        thread.join()
        store = DatasetStore(GovernancePaths.of(config))
        status = store.status(store.read("racing", 1))
        assert not status.reproducible and status.erasure_ids
        assert user_rows(kept_spine(config, "racing")) == 0
        with pytest.raises(FailedPreconditionError):
            client.get_training_dataset("racing", 1)


def test_a_materialization_under_way_does_not_write_an_erased_entity_back_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_repo(tmp_path / "repo")
    pending = GovernancePaths.of(config).erasures_pending
    run = materialize._materialize_view
    erasures: list[threading.Thread] = []

    def erase_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # Planned before the request; the request lands as it starts reading.
        if not erasures:
            thread = threading.Thread(target=lambda: eraser_online(config).erase({"user_id": [USER]}))
            thread.start()
            erasures.append(thread)
            while not list(pending.glob("*.json")):
                threading.Event().wait(0.01)
        return run(*args, **kwargs)

    monkeypatch.setattr(materialize, "_materialize_view", erase_meanwhile)
    end = datetime(2024, 6, 10, tzinfo=UTC)
    materialize.materialize_range(config, end - timedelta(days=30), end)
    [thread] = erasures
    thread.join()
    snapshot = RegistryStore(config.registry_path).latest()
    store = open_online_store(config)
    try:
        for name in ("stats", "profile"):
            table = snapshot.view_table(name)
            [result] = store.read([ViewRead(table, encode_keys(table.view.join_keys, [[USER, 8]]),
                                            list(table.view.feature_names))])
            assert [v is None for v in next(iter(result.values.values()))] == [True, False], name
    finally:
        store.close()


def eraser_online(config: QuiverConfig) -> Eraser:
    return Eraser(GovernancePaths.of(config), RegistryStore(config.registry_path).latest(),
                  open_online_store(config), "test")


def test_a_kill_between_a_swap_and_its_log_line_keeps_other_datasets_reproducible(
    tmp_path: Path, flight_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quiver_server.governance import erasure

    config = write_repo(tmp_path / "repo")
    labelled = spine(users=12)
    with flight_server(config) as location, TrainingClient(location) as client:
        without = client.create_training_dataset(
            "without_user", labelled.filter(pc.not_equal(labelled["user_id"], USER)),
            feature_service="model",
        )
        append_line = erasure.append_line

        def killed_at_first_rewrite_line(path: Path, record: dict[str, Any]) -> None:
            if record.get("event") == "file_rewritten":
                raise SystemExit("killed")
            append_line(path, record)

        monkeypatch.setattr(erasure, "append_line", killed_at_first_rewrite_line)
        with pytest.raises(SystemExit):
            eraser(config).erase({"user_id": [USER]})
        monkeypatch.undo()
        eraser(config).resume()
        assert not list(GovernancePaths.of(config).erasures_pending.glob("*.json"))
        # Its files lost only rows of an entity its spine never had: the same rows.
        assert client.get_training_dataset("without_user", without.version).table.equals(without.table)
