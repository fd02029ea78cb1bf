"""A training dataset of a transformed feature service keeps the transform parameters it
was built with: a later fit changes new training sets, never the dataset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from transform_repo import spine, write_history, write_repo

from quiver import TrainingClient
from quiver_server.config import load_config
from quiver_server.repo import apply

NOW = datetime.now(UTC).replace(microsecond=0)
USERS = [1, 2, 3]


def test_a_dataset_keeps_its_transform_parameters_after_a_refit(
    tmp_path: Path, flight_server: Any,
) -> None:
    repo = write_repo(tmp_path / "repo")
    event = NOW - timedelta(hours=1)
    nums = [{"user_id": u, "event_timestamp": event, "created": event, "x_float": float(u) * 2,
             "x_int": u * 10, "x_f32": float(u), "cat": "abc"[u - 1], "code": u,
             "flag": u % 2 == 0} for u in USERS]
    ages = [{"user_id": u, "event_timestamp": event, "y": float(u)} for u in USERS]
    write_history(repo, nums, ages)
    config = load_config(repo, env={})
    apply(config)
    labelled = spine(USERS, [1.0, 2.0, 3.0], NOW)
    with flight_server(config) as location, TrainingClient(location) as client:
        client.get_training_set(spine([1, 2], [5.0, 6.0], NOW), feature_service="everything",
                                fit=True)
        created = client.create_training_dataset("scaled", labelled, feature_service="everything")
        assert created.record.transform_version == 1
        assert created.table.schema.metadata[b"quiver.transform_version"] == b"1"
        client.get_training_set(spine([2, 3], [5.0, 6.0], NOW), feature_service="everything",
                                fit=True)
        refitted = client.get_training_set(labelled, feature_service="everything")
        assert refitted.schema.metadata[b"quiver.transform_version"] == b"2"
        assert not refitted.equals(created.table)
        again = client.get_training_dataset("scaled")
        assert again.table.equals(created.table)


def test_a_dataset_is_pulled_again_after_its_service_changes_its_transforms(
    tmp_path: Path, flight_server: Any,
) -> None:
    repo = write_repo(tmp_path / "repo")
    event = NOW - timedelta(hours=1)
    nums = [{"user_id": u, "event_timestamp": event, "created": event, "x_float": float(u) * 2,
             "x_int": u * 10, "x_f32": float(u), "cat": "abc"[u - 1], "code": u,
             "flag": u % 2 == 0} for u in USERS]
    ages = [{"user_id": u, "event_timestamp": event, "y": float(u)} for u in USERS]
    write_history(repo, nums, ages)
    config = load_config(repo, env={})
    apply(config)
    labelled = spine(USERS, [1.0, 2.0, 3.0], NOW)
    with flight_server(config) as location, TrainingClient(location) as client:
        client.get_training_set(labelled, feature_service="everything", fit=True)
        created = client.create_training_dataset("scaled", labelled, feature_service="everything")
        # The service now scales x_float another way: a new definition, fitted again.
        features = repo / "features.py"
        features.write_text(features.read_text().replace(
            'T.standard_scaler("nums:x_float")', 'T.min_max_scaler("nums:x_float")'))
        apply(load_config(repo, env={}))
        client.get_training_set(labelled, feature_service="everything", fit=True)
        assert not client.get_training_set(labelled, feature_service="everything").equals(created.table)
        again = client.get_training_dataset("scaled")
        assert again.table.equals(created.table)
