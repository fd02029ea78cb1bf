"""The point-in-time join against a brute-force reference on small random data."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver import Entity, FeatureView, Field, Float64, Int64, ParquetSource, String
from quiver_flight import history
from quiver_flight.pit import PointInTimeEngine
from quiver_server.registry.snapshot import FeatureRef

T0 = datetime(2024, 1, 1, tzinfo=UTC)
US = pa.timestamp("us", tz="UTC")

user = Entity("user", (Field("user_id", Int64),))
shop = Entity("shop", (Field("shop", String), Field("branch", Int64)))


def when(tick: int) -> datetime:
    # Ticks of 250 ms: collisions are frequent, and ttls of whole seconds fall
    # both exactly on and between ticks.
    return T0 + timedelta(milliseconds=250 * tick)


history_rows = st.lists(
    st.tuples(
        st.integers(0, 2),                                   # key
        st.integers(0, 12),                                  # event tick (ties are common)
        st.one_of(st.none(), st.integers(0, 3)),             # created tick
        st.integers(-5, 5).map(lambda x: None if x == 0 else float(x)),  # feature value
    ),
    max_size=25,
)
# Spine times are drawn near history event times (at the ttl bounds, just
# past them, exactly on them) as often as anywhere, so the edges get hit.
spine_rows = st.lists(
    st.tuples(
        st.integers(0, 3),                                   # user key (3: no history)
        st.integers(0, 3),                                   # shop key
        st.one_of(
            st.integers(-2, 16).map(lambda t: (None, t)),
            st.tuples(st.integers(0, 49), st.sampled_from([-1, 0, 1, 4, 5, 8, 9, 12, 13])),
        ),
    ),
    max_size=20,
)


def spine_tick(anchor: tuple[int | None, int], events: list[int]) -> int:
    index, delta = anchor
    if index is None or not events:
        return delta
    return events[index % len(events)] + delta


def reference(rows: list[tuple[Any, ...]], key: Any, tick: int, ttl_ticks: int) -> Any:
    """Brute force: latest event <= t within the ttl, then created, then source order."""
    best = None
    for position, (k, event, created, value) in enumerate(rows):
        if k != key or event > tick or (ttl_ticks and event < tick - ttl_ticks):
            continue
        rank = (event, -1 if created is None else created, position)
        if best is None or rank > best[0]:
            best = (rank, value)
    return None if best is None else best[1]


def write(directory: Path, rows: list[dict[str, Any]], split: int, keys: dict[str, pa.DataType]) -> None:
    schema = pa.schema([*keys.items(), ("event_timestamp", US), ("created", US), ("value", pa.float64())])
    directory.mkdir(parents=True)
    for part, chunk in (("a", rows[:split]), ("b", rows[split:])):
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), directory / f"part-{part}.parquet")


@settings(max_examples=80, deadline=None)
@given(
    users=history_rows,
    shops=history_rows,
    spine_draw=spine_rows,
    user_ttl=st.sampled_from([0, 1, 3]),
    shop_ttl=st.sampled_from([0, 2]),
    split=st.integers(0, 25),
    mode=st.sampled_from(["cached", "scan", "ranked"]),
)
def test_engine_matches_brute_force(
    users: list[tuple[Any, ...]], shops: list[tuple[Any, ...]], spine_draw: list[tuple[Any, ...]],
    user_ttl: int, shop_ttl: int, split: int, mode: str,
) -> None:
    events = sorted({e for _, e, _, _ in users + shops})
    spine = [(u, s, spine_tick(anchor, events)) for u, s, anchor in spine_draw]
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        root = Path(tmp)
        if mode == "ranked":
            patch.setattr(history, "MAX_COMPOSITE_BITS", 0)
        write(root / "users", [
            {"user_id": k, "event_timestamp": when(e), "created": None if c is None else when(c), "value": v}
            for k, e, c, v in users
        ], split, {"user_id": pa.int64()})
        shop_key = ("a", "b")
        write(root / "shops", [
            {"shop": shop_key[k % 2], "branch": k // 2, "event_timestamp": when(e),
             "created": None if c is None else when(c), "value": v}
            for k, e, c, v in shops
        ], split, {"shop": pa.string(), "branch": pa.int64()})
        user_view = FeatureView(
            name="users", entities=[user], schema=[Field("value", Float64)],
            source=ParquetSource("users", created_timestamp_field="created"),
            ttl=timedelta(seconds=user_ttl),
        )
        shop_view = FeatureView(
            name="shops", entities=[shop], schema=[Field("value", Float64)],
            source=ParquetSource("shops", created_timestamp_field="created"),
            ttl=timedelta(seconds=shop_ttl),
        )
        table = pa.table({
            "user_id": pa.array([u for u, _, _ in spine], pa.int64()),
            "shop": pa.array([shop_key[s % 2] for _, s, _ in spine], pa.string()),
            "branch": pa.array([s // 2 for _, s, _ in spine], pa.int64()),
            "event_timestamp": pa.array([when(t) for _, _, t in spine], US),
        })
        engine = PointInTimeEngine(tmp, cache_bytes=0 if mode == "scan" else 1 << 26, batch_rows=7)
        refs = [FeatureRef(user_view, user_view.feature("value")),
                FeatureRef(shop_view, shop_view.feature("value"))]
        out = engine.join_table(table, refs, full_feature_names=True)

    assert out.num_rows == len(spine)
    assert out.select(table.schema.names).equals(table)
    user_rows = users[:split] + users[split:]
    shop_rows = shops[:split] + shops[split:]
    expected_users = [reference(user_rows, u, t, user_ttl * 4) for u, _, t in spine]
    expected_shops = [reference(shop_rows, s, t, shop_ttl * 4) for _, s, t in spine]
    assert out["users__value"].to_pylist() == expected_users
    assert out["shops__value"].to_pylist() == expected_shops
