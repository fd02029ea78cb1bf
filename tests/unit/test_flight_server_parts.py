"""The Flight server's small parts: bounded, path-free errors and the background job runner."""

from __future__ import annotations

import threading
import traceback
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.errors import InvalidArgumentError, NotFoundError
from quiver_flight.errors import (
    MAX_ENTRIES,
    MAX_TEXT_BYTES,
    ErrorPolicy,
    InvalidArgumentStatus,
    TrailerStatus,
    clip,
)
from quiver_flight.periodic import Periodic


@given(text=st.text(), limit=st.integers(8, 500))
def test_clip_keeps_text_whole_or_cuts_it_to_valid_utf8_within_the_limit(text: str, limit: int) -> None:
    clipped = clip(text, limit)
    size = len(clipped.encode("utf-8"))
    assert size <= max(limit, len(text.encode("utf-8", "backslashreplace")))
    if len(text.encode("utf-8", "backslashreplace")) > limit:
        assert size <= limit and clipped.endswith("...")


def test_server_paths_are_named_by_role_even_through_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "volume" / "offline"
    real.mkdir(parents=True)
    link = tmp_path / "offline-link"
    link.symlink_to(real, target_is_directory=True)
    policy = ErrorPolicy({str(link): "<offline store>", str(link / "spines"): "<spines>"})
    error = policy.bounded(InvalidArgumentError.for_field(
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
    error = policy.bounded(NotFoundError(
        f"registry version 7 ({registry}/v00000007.pb) does not verify; see {tmp_path}/x"))
    assert error.message == "registry version 7 (<registry>) does not verify; see <repo>/x"


def test_echoed_input_is_bounded() -> None:
    long = "x" * 100_000
    error = ErrorPolicy().bounded(NotFoundError(
        f"no feature {long!r}", metadata={f"k{i}": long for i in range(50)}))
    assert len(error.message.encode()) <= MAX_TEXT_BYTES
    assert len(error.metadata) == MAX_ENTRIES
    assert all(len(v) <= 100 for v in error.metadata.values())
    assert isinstance(error, NotFoundError) and error.reason == "NOT_FOUND"


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
