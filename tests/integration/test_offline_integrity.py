"""Offline history: pushes reach the disk before they appear; a file that does not read is named.

A torn or corrupt Parquet file in a view's history makes `quiver materialize` exit
with one line naming the file (relative to the offline store, never the server's
absolute path) and Flight answer FAILED_PRECONDITION naming it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver import TrainingClient
from quiver.errors import FailedPreconditionError
from quiver_server.cli import main as cli_main
from quiver_server.config import QuiverConfig
from quiver_server.offline.append import append_history
from quiver_server.registry.store import RegistryStore

NOW = datetime.now(UTC).replace(microsecond=0)


def merchant_rows(ids: list[int], when: datetime) -> pa.Table:
    n = len(ids)
    return pa.table({
        "merchant_id": pa.array(ids, pa.int64()),
        "event_timestamp": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
        "merchant_category": ["travel"] * n,
        "chargeback_rate_30d": [0.01] * n,
        "merchant_txn_count_24h": pa.array([5] * n, pa.int32()),
        "avg_ticket_30d": [12.5] * n,
        "is_high_risk": [False] * n,
    })


def pushed_file(config: QuiverConfig) -> tuple[Path, str]:
    """Append rows offline as a push does; the file and its name relative to the offline root."""
    view = RegistryStore(config.registry_path).latest().feature_view("merchant_stats")
    [path] = append_history(config.offline_root, view, merchant_rows([1, 2, 3], NOW - timedelta(hours=1)))
    return Path(path), os.path.relpath(path, config.offline_root)


def test_push_file_and_directory_are_synced_before_and_after_the_rename(
    applied_demo: QuiverConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path, _ = pushed_file(applied_demo)
    renamed = events.index(("rename", str(path)))
    synced_file = [e for e in events[:renamed] if e[0] == "fsync" and e[1].endswith(".tmp")]
    assert synced_file, f"the file was not synced before the rename: {events}"
    assert ("fsync", str(path.parent)) in events[renamed:], "the directory entry was not synced"
    # The new date= directory is made durable in its parent too.
    assert ("fsync", str(path.parent.parent)) in events[:renamed]
    assert pq.read_table(path).num_rows == 3


def tear(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # the first page's header zeroed: the footer still reads, the data does not
        path.write_bytes(data[:4] + bytes(64) + data[68:])


@pytest.mark.parametrize("how", ["truncated", "empty", "corrupt-page"])
def test_materialize_names_a_torn_history_file(
    applied_demo: QuiverConfig, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    path, name = pushed_file(applied_demo)
    tear(path, how)
    code = cli_main(["--repo", str(applied_demo.repo_path), "materialize",
                     (NOW - timedelta(days=30)).isoformat(), "now", "--views", "merchant_stats"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("quiver: error: feature view 'merchant_stats': history file ")
    assert name in lines[-1] and "cannot be read" in lines[-1]
    assert "Traceback" not in err and str(applied_demo.repo_path) not in err


def test_flight_names_a_torn_history_file(
    applied_demo: QuiverConfig, flight_server: Callable[..., AbstractContextManager[str]]
) -> None:
    path, name = pushed_file(applied_demo)
    tear(path, "truncated")
    spine = pa.table({
        "merchant_id": pa.array([1, 2], pa.int64()),
        "event_timestamp": pa.array([NOW, NOW], pa.timestamp("us", tz="UTC")),
    })
    with (
        flight_server(applied_demo) as location,
        TrainingClient(location) as client,
        pytest.raises(FailedPreconditionError) as info,
    ):
        client.get_training_set(spine, features=["merchant_stats:merchant_category"])
    error = info.value
    assert error.reason == "UNREADABLE_HISTORY" and error.metadata["file"] == name
    assert name in error.message and str(applied_demo.repo_path) not in error.message
