"""Spines through a real Flight server: where Parquet spines may come from, what uploads may
hold, when spines and tickets expire, and the sweeper that deletes them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flight_data import (
    expected,
    make_spine,
    running,
    user,
    write_history,
)
from flight_wire import call, descriptor, problems
from pyarrow import flight

from quiver import FeatureView, Field, Int64, OfflineSpine, ParquetSource, TrainingClient
from quiver.convert import pack
from quiver.errors import (
    DefinitionError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    QuiverError,
    ResourceExhaustedError,
)
from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.server import create_flight_server
from quiver_server.config import QuiverConfig


@pytest.fixture
def repo(flight_repo: Callable[..., QuiverConfig]) -> QuiverConfig:
    return flight_repo()


@pytest.fixture
def spines(repo: QuiverConfig) -> Path:
    directory = Path(repo.offline_root) / "spines"
    directory.mkdir()
    return directory


def server_paths(config: QuiverConfig) -> list[str]:
    return [str(config.repo_path), config.offline_root, str(config.registry_path)]


def refused(client: TrainingClient, path: str, error: type[QuiverError] = InvalidArgumentError,
            **kwargs: Any) -> QuiverError:
    kwargs = kwargs or {"feature_service": "model"}
    with pytest.raises(error) as info:
        client.get_training_set(OfflineSpine(path), **kwargs)
    return info.value


# ---- Parquet spines come from the spine directory only ----------------------------------------


def test_history_is_not_readable_as_a_spine(repo: QuiverConfig, spines: Path) -> None:
    with running(repo) as (_, location), TrainingClient(location) as client:
        # A view's history, named as it lies in the offline store, is not in the spine directory.
        missing = refused(client, "user_stats", NotFoundError, features=["user_stats:txns"])
        escaping = refused(client, "../user_stats", features=["user_stats:txns"])
    assert missing.reason == "SPINE_NOT_FOUND"
    assert escaping.reason == "INVALID_SPINE_PATH"
    for error in (missing, escaping):
        assert repo.offline_root not in error.message and str(repo.repo_path) not in error.message


def test_symbolic_links_out_of_the_spine_directory_are_refused(repo: QuiverConfig, spines: Path) -> None:
    history = Path(repo.offline_root) / "user_stats"
    (spines / "to_history").symlink_to(history, target_is_directory=True)
    (spines / "mixed").mkdir()
    pq.write_table(make_spine(10), spines / "mixed" / "a.parquet")
    (spines / "mixed" / "b.parquet").symlink_to(history / "part-0.parquet")
    pq.write_table(make_spine(20, seed=4), spines / "labels.parquet")
    (spines / "alias.parquet").symlink_to(spines / "labels.parquet")
    with running(repo) as (_, location), TrainingClient(location) as client:
        for path in ("to_history", "to_history/part-0.parquet", "mixed"):
            error = refused(client, path, features=["user_stats:txns"])
            assert error.reason == "SPINE_PATH_OUTSIDE", path
            assert str(history) not in error.message and repo.offline_root not in error.message
        # A link that stays inside the directory is an ordinary spine.
        got = client.get_training_set(OfflineSpine("alias.parquet"), feature_service="model")
    assert got.equals(expected(repo, make_spine(20, seed=4)))


def test_a_spine_directory_holding_history_is_refused_per_file(
    tmp_path: Path, make_config: Callable[..., QuiverConfig], apply_objects: Callable[..., Any]
) -> None:
    config = make_config(tmp_path)
    write_history(Path(config.offline_root))
    stats = FeatureView(name="stats", entities=[user], schema=[Field("txns", Int64)],
                        source=ParquetSource("spines/stats"))
    apply_objects(config, [user], [stats])
    (Path(config.offline_root) / "spines" / "stats").mkdir(parents=True)
    os.link(Path(config.offline_root) / "user_stats" / "part-0.parquet",
            Path(config.offline_root) / "spines" / "stats" / "part-0.parquet")
    with running(config) as (_, location), TrainingClient(location) as client:
        error = refused(client, "stats", features=["stats:txns"])
    assert error.reason == "SPINE_PATH_IS_HISTORY"


MALFORMED = {
    "NUL byte": "labels\x00.parquet",
    "long name": "a" * 300 + ".parquet",
    "long path": "/".join(["abcdefghij"] * 120),
    "absolute": "/etc/passwd",
    "parent": "../data/user_stats",
    "backslash": "..\\user_stats",
    "uri": "file:///etc/passwd",
    "hidden": "x/.ticket-key",
    "dot": ".",
    "surrogate": "labels\udcff.parquet",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_spine_paths_are_invalid_argument(repo: QuiverConfig, spines: Path, case: str) -> None:
    command = pb.TrainingSetCommand(feature_service="model")
    path = MALFORMED[case]
    if case == "surrogate":
        # Protobuf strings are UTF-8; a client can still send these bytes.
        command.spine.parquet_path = "labels.parquet"
        raw = pack(command).replace(b"labels.parquet", b"labels\xed\xb3\xbf.parquet")
    else:
        command.spine.parquet_path = path
        raw = pack(command)
    with running(repo) as (_, location):
        answer = call(location.removeprefix("grpc://"), "GetFlightInfo", descriptor(raw))
    assert problems(answer, server_paths(repo)) == []
    assert answer.status is not None and answer.status.code == 3, answer.status


def test_spine_root_is_configurable_and_kept_apart_from_history_and_registry(
    tmp_path: Path, flight_repo: Callable[..., QuiverConfig]
) -> None:
    elsewhere = tmp_path / "labels"
    elsewhere.mkdir()
    spine = make_spine(30, seed=9)
    pq.write_table(spine, elsewhere / "week1.parquet")
    config = flight_repo(spine_root=str(elsewhere))
    with running(config) as (_, location), TrainingClient(location) as client:
        got = client.get_training_set(OfflineSpine("week1.parquet"), feature_service="model")
    assert got.equals(expected(config, spine))
    for bad in (".", "..", str(config.registry_path), "_spines"):
        settings = config.flight.model_copy(update={"spine_root": bad})
        with pytest.raises(DefinitionError, match="spine_root"):
            create_flight_server(config.model_copy(update={"flight": settings}))


def test_tickets_over_parquet_spines_expire(repo: QuiverConfig, spines: Path, fake_clock: Any) -> None:
    pq.write_table(make_spine(40), spines / "labels.parquet")
    with running(repo, clock=fake_clock) as (_, location), TrainingClient(location) as client:
        info = client.plan(OfflineSpine("labels.parquet"), feature_service="model")
        assert client.fetch(info).num_rows == 40
        fake_clock.now += repo.flight.spine_ttl_seconds + 1
        with pytest.raises(FailedPreconditionError, match="expired") as error:
            client.fetch(info)
        assert error.value.reason == "STALE_TICKET"
        # Planned again, the same spine serves again.
        again = client.plan(OfflineSpine("labels.parquet"), feature_service="model")
        assert client.fetch(again).num_rows == 40


# ---- Uploads are bounded in bytes, and expired spines are swept on a timer -------------------


def wide_spine(rows: int, seed: int = 0) -> pa.Table:
    """A valid spine whose label column makes it about 1 KB a row."""
    spine = make_spine(rows, seed)
    rng = np.random.default_rng(seed)
    return spine.append_column("notes", pa.array([rng.bytes(1000) for _ in range(rows)]))


def stored_files(config: QuiverConfig) -> list[str]:
    directory = Path(config.offline_root) / "_spines"
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".arrow") if directory.exists() else []


@pytest.mark.parametrize("batches", [1, 25])
def test_uploads_over_the_byte_limit_are_refused_and_leave_nothing(
    flight_repo: Callable[..., QuiverConfig], batches: int
) -> None:
    config = flight_repo(max_spine_bytes=100_000)
    spine = wide_spine(200)
    with running(config) as (_, location), TrainingClient(location) as client:
        reader = pa.RecordBatchReader.from_batches(
            spine.schema, spine.to_batches(max_chunksize=-(-200 // batches)))
        with pytest.raises(ResourceExhaustedError, match=r"flight\.max_spine_bytes") as error:
            client.upload_spine(reader)
        assert error.value.reason == "SPINE_TOO_LARGE"
        assert error.value.metadata == {"max_spine_bytes": "100000"}
        assert stored_files(config) == []
        assert client.upload_spine(wide_spine(50)).rows == 50


def test_stored_spines_are_bounded_in_total(flight_repo: Callable[..., QuiverConfig], fake_clock: Any) -> None:
    config = flight_repo(max_spine_bytes=100_000, max_stored_spine_bytes=150_000)
    with running(config, clock=fake_clock) as (_, location), TrainingClient(location) as client:
        client.upload_spine(wide_spine(80, seed=1))
        with pytest.raises(ResourceExhaustedError, match=r"flight\.max_stored_spine_bytes") as error:
            client.upload_spine(wide_spine(80, seed=2))
        assert error.value.reason == "SPINE_STORE_FULL"
        assert len(stored_files(config)) == 1
        # Once the first spine expires, its room is given back.
        fake_clock.now += config.flight.spine_ttl_seconds + 1
        assert client.upload_spine(wide_spine(80, seed=3)).rows == 80
    assert len(stored_files(config)) == 1


def test_expiry_counts_from_the_end_of_the_upload(repo: QuiverConfig, fake_clock: Any) -> None:
    spine = make_spine(100)
    with running(repo, clock=fake_clock) as (_, location):
        raw = flight.connect(location)
        writer, reader = raw.do_put(
            flight.FlightDescriptor.for_command(pack(pb.UploadSpineCommand())), spine.schema)
        writer.write_table(spine.slice(0, 50))
        # Once the server is writing the spine, the upload goes on for a long while.
        wait_until(lambda: any((Path(repo.offline_root) / "_spines").glob(".tmp-*")))
        fake_clock.now += 5000
        writer.write_table(spine.slice(50))
        writer.done_writing()
        result = pb.UploadSpineResult.FromString(reader.read().to_pybytes())
        writer.close()
        raw.close()
    assert result.rows == 100
    assert result.expires_at.seconds == int(fake_clock.now) + repo.flight.spine_ttl_seconds


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for the server to reach a state (polling, never asserting how long it takes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server never reached the state waited for"
        time.sleep(0.01)


def test_expired_spines_are_swept_without_another_upload(repo: QuiverConfig, fake_clock: Any) -> None:
    with running(repo, clock=fake_clock) as (server, location), TrainingClient(location) as client:
        first = client.upload_spine(make_spine(5))
        fake_clock.now += 60
        second = client.upload_spine(make_spine(5))
        assert server.spine_sweeper.run_now(timeout=30)
        assert stored_files(repo) == sorted([f"{first.spine_id}.arrow", f"{second.spine_id}.arrow"])
        fake_clock.now += repo.flight.spine_ttl_seconds - 30
        assert server.spine_sweeper.run_now(timeout=30)
        assert stored_files(repo) == [f"{second.spine_id}.arrow"]
    # Stopped with the server.
    assert not server.spine_sweeper.run_now(timeout=1)


def test_expired_staged_training_sets_are_swept_without_another_plan(
    repo: QuiverConfig, fake_clock: Any
) -> None:
    """Training sets a Spark-engine server staged expire with their spine; any Flight server
    over the offline store sweeps them on its timer, even if nobody plans again."""
    staging = Path(repo.offline_root) / "_staging" / "training"
    with running(repo, clock=fake_clock) as (server, _):
        expired = staging / f"{int((fake_clock.now - 1) * 1_000_000):020d}-0123456789abcdef"
        live = staging / f"{int((fake_clock.now + 600) * 1_000_000):020d}-fedcba9876543210"
        for directory in (expired, live):
            (directory / "result" / "partition=0").mkdir(parents=True)
            (directory / "result" / "partition=0" / "part-0.parquet").write_bytes(b"staged")
        assert server.spine_sweeper.run_now(timeout=30)
        assert sorted(p.name for p in staging.iterdir()) == [live.name]
