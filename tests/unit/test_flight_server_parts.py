"""The Flight server's small parts: bounded, path-free errors and the background job runner."""

from __future__ import annotations

import threading
import traceback
from pathlib import Path

import pytest
from google.rpc import status_pb2

from quiver.errors import InvalidArgumentError, NotFoundError
from quiver_flight.errors import ErrorPolicy, InvalidArgumentStatus, TrailerStatus
from quiver_flight.periodic import Periodic


def test_server_paths_are_named_by_role_even_through_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "volume" / "offline"
    real.mkdir(parents=True)
    link = tmp_path / "offline-link"
    link.symlink_to(real, target_is_directory=True)
    policy = ErrorPolicy({str(link): "<offline store>", str(link / "spines"): "<spines>"})
    error = policy.redacted(InvalidArgumentError.for_field(
        "spine", f"cannot read {real}/user_stats/a.parquet nor {link}/spines/x.parquet",
        metadata={"file": f"{real}/a"}))
    assert str(tmp_path) not in error.message
    assert "<offline store>/user_stats/a.parquet" in error.message
    assert "<spines>/x.parquet" in error.message
    assert error.metadata == {"file": "<offline store>/a"}
    assert str(tmp_path) not in error.violations[0].description


def test_registry_file_names_are_hidden(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    policy = ErrorPolicy({str(registry): "<registry>", str(tmp_path): "<repo>"},
                         opaque=[str(registry)])
    error = policy.redacted(NotFoundError(
        f"registry version 7 ({registry}/v00000007.pb) does not verify; see {tmp_path}/x"))
    assert error.message == "registry version 7 (<registry>) does not verify; see <repo>/x"


def test_a_status_stays_bounded_however_long_the_input_it_echoes(tmp_path: Path) -> None:
    long = f"{tmp_path}/" + "é" * 100_000
    policy = ErrorPolicy({str(tmp_path): "<offline store>"})
    raised = policy.flight_error(NotFoundError(
        f"no feature {long!r}", metadata={f"k{i}": long for i in range(50)}), "test")
    status = status_pb2.Status.FromString(raised.extra_info)  # type: ignore[attr-defined]
    assert len(raised.extra_info) < 4096 and len(str(raised).encode()) < 4096  # type: ignore[attr-defined]
    assert status.code == 5 and str(tmp_path) not in status.message + str(raised)
    assert "<offline store>/" in status.message


def test_text_that_is_not_utf8_is_escaped() -> None:
    error = ErrorPolicy().redacted(InvalidArgumentError.for_field("spine.x\udcff", "bad \udcff"))
    assert error.message.encode("utf-8") and error.violations[0].field == "spine.x\\udcff"


def test_a_trailer_status_renders_without_a_traceback() -> None:
    """Arrow renders a Python exception's traceback into the gRPC message unless that rendering
    fails; a trailer status makes it fail (its note is not UTF-8), so only its type shows."""
    status = TrailerStatus.of(InvalidArgumentError("bad"), b"\x08\x03")
    assert isinstance(status, InvalidArgumentStatus) and isinstance(status, ValueError)
    assert str(status) == "INVALID_ARGUMENT: bad" and status.extra_info == b"\x08\x03"
    try:
        raise status
    except TrailerStatus as raised:
        rendered = "".join(traceback.format_exception(raised))
    with pytest.raises(UnicodeEncodeError):
        rendered.encode("utf-8")
    str(status).encode("utf-8")


def test_a_periodic_job_runs_on_its_timer_and_on_request() -> None:
    ran = threading.Event()
    runs: list[int] = []

    def job() -> None:
        runs.append(1)
        ran.set()

    periodic = Periodic("test-job", 0.01, job)
    periodic.start()
    assert ran.wait(30)  # the timer, with no request
    assert periodic.run_now(timeout=30)
    count = len(runs)
    assert periodic.run_now(timeout=30) and len(runs) > count
    periodic.stop(timeout=30)
    assert not periodic.run_now(timeout=1)


def test_a_failing_job_keeps_running() -> None:
    calls: list[int] = []

    def job() -> None:
        calls.append(1)
        raise RuntimeError("store down")

    periodic = Periodic("failing-job", 3600, job)
    periodic.start()
    assert periodic.run_now(timeout=30) and periodic.run_now(timeout=30)
    assert len(calls) == 2
    periodic.stop(timeout=30)
