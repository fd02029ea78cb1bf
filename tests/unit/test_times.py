"""Which event, created and timestamp-feature times a write may carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from quiver_server.times import MAX_MICROS, MIN_MICROS, latest_allowed, micros, time_violation

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATEST = latest_allowed(NOW, 300)


def column(*values: datetime | None) -> pa.Array:
    return pa.array(list(values), pa.timestamp("us", tz="UTC"))


def test_times_up_to_the_skew_pass() -> None:
    assert time_violation("c", column(NOW, None, NOW + timedelta(seconds=300)), LATEST) is None
    assert time_violation("c", column(datetime(1, 1, 1, tzinfo=UTC)), LATEST) is None


def test_the_first_future_row_is_named_with_the_count() -> None:
    problem = time_violation(
        "columns.event_timestamp",
        column(NOW, NOW + timedelta(seconds=301), datetime(9999, 1, 1, tzinfo=UTC)),
        LATEST,
    )
    assert problem is not None and problem.field == "columns.event_timestamp"
    assert problem.description.startswith("row 1: 2026-01-01T00:05:01+00:00 is in the future")
    assert "(1 more row(s) like it)" in problem.description


def test_unrepresentable_times_are_refused_even_without_a_clock() -> None:
    for value in (2**63 - 1, -(2**63), MAX_MICROS + 1, MIN_MICROS - 1):
        problem = time_violation("c", pa.array([0, value], pa.int64()), None)
        assert problem is not None and f"row 1: {value} microseconds" in problem.description
    ns = pa.array([2**63 - 1], pa.timestamp("ns", tz="UTC"))  # 2262: representable
    assert time_violation("c", ns, None) is None
    assert time_violation("c", ns, LATEST) is not None


def test_micros_and_latest() -> None:
    assert micros(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)) == 1_000_000
    assert latest_allowed(datetime(9999, 12, 31, tzinfo=UTC), 10**9).year == 9999
