"""PushFeatures and DeleteEntities through a real server (embedded store)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver import OnlineClient
from quiver.errors import InvalidArgumentError, NotFoundError
from quiver_server.cli import main as cli_main
from quiver_server.config import QuiverConfig
from quiver_server.online.base import WriteBatch
from quiver_server.online.keys import encode_keys
from quiver_server.online.sqlite import SqliteOnlineStore
from quiver_server.registry.store import RegistryStore
from quiver_server.serving.server import create_server

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def client(applied_demo: QuiverConfig) -> Iterator[OnlineClient]:
    app, port = create_server(applied_demo, "127.0.0.1", 0)
    with app, OnlineClient(f"127.0.0.1:{port}") as c:
        yield c


def merchant_rows(ids: list[int], when: datetime, category: str = "travel") -> dict[str, list[object]]:
    n = len(ids)
    return {
        "merchant_id": ids,
        "event_timestamp": [when] * n,
        "merchant_category": [category] * n,
        "chargeback_rate_30d": [0.01] * n,
        "merchant_txn_count_24h": [5] * n,
        "avg_ticket_30d": [12.5] * n,
        "is_high_risk": [False] * n,
    }


def categories(client: OnlineClient, ids: list[int]) -> list[object]:
    return client.get_online_features(
        features=["merchant_stats:merchant_category"], entities={"merchant_id": ids}
    ).values("merchant_category")


def test_push_online_then_read(client: OnlineClient) -> None:
    result = client.push("merchant_stats", merchant_rows([501, 502], NOW))
    assert (result.rows, result.superseded) == (2, 0)
    assert categories(client, [501, 502, 503]) == ["travel", "travel", None]


def test_older_push_never_overwrites_newer(client: OnlineClient) -> None:
    client.push("merchant_stats", merchant_rows([601], NOW, "new"))
    result = client.push("merchant_stats", merchant_rows([601], NOW - timedelta(hours=1), "old"))
    assert result.superseded == 1
    assert categories(client, [601]) == ["new"]


def test_push_accepts_pandas_and_arrow(client: OnlineClient) -> None:
    import pandas as pd

    frame = pd.DataFrame(merchant_rows([701], NOW.replace(tzinfo=None), "pandas"))  # naive = UTC
    client.push("merchant_stats", frame)
    client.push("merchant_stats", pa.table(merchant_rows([702], NOW, "arrow")))
    assert categories(client, [701, 702]) == ["pandas", "arrow"]


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        (lambda r: r.pop("avg_ticket_30d"), "columns.avg_ticket_30d", "missing column"),
        (lambda r: r.__setitem__("surprise", [1]), "columns.surprise", "not a column of feature view"),
        (lambda r: r.__setitem__("avg_ticket_30d", ["high"]), "columns.avg_ticket_30d",
         "expected float64 (double), got string"),
        (lambda r: r.__setitem__("event_timestamp", [None]), "columns.event_timestamp",
         "timestamp column has 1 null value"),
        (lambda r: r.pop("event_timestamp"), "columns.event_timestamp", "missing column"),
    ],
)
def test_bad_push_names_the_column_and_writes_nothing(
    applied_demo: QuiverConfig, client: OnlineClient, change: object, field: str, text: str
) -> None:
    rows = merchant_rows([801], NOW)
    change(rows)  # type: ignore[operator]
    with pytest.raises(InvalidArgumentError) as info:
        client.push("merchant_stats", rows, to="online_and_offline")
    violations = {v.field: v.description for v in info.value.violations}
    assert text in violations[field], violations
    assert categories(client, [801]) == [None]
    assert not list((applied_demo.repo_path / "data" / "merchant_stats").glob("date=*"))


def test_push_null_timestamp_is_rejected(client: OnlineClient) -> None:
    rows = pa.table(merchant_rows([802], NOW)).set_column(
        1, "event_timestamp", pa.array([None], pa.timestamp("us", tz="UTC")))
    with pytest.raises(InvalidArgumentError, match="timestamp column has 1 null value"):
        client.push("merchant_stats", rows)


def test_push_unknown_view_and_bad_target(client: OnlineClient) -> None:
    with pytest.raises(NotFoundError, match="feature view 'nope'"):
        client.push("nope", merchant_rows([1], NOW))
    with pytest.raises(InvalidArgumentError, match="not a push target"):
        client.push("merchant_stats", merchant_rows([1], NOW), to="everywhere")


def test_push_offline_appends_new_parquet_files(applied_demo: QuiverConfig, client: OnlineClient) -> None:
    source = applied_demo.repo_path / "data" / "merchant_stats"
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*.parquet")}
    client.push("merchant_stats", merchant_rows([901, 902], NOW, "offline-only"), to="offline")
    after = set(source.rglob("*.parquet"))
    new = after - set(before)
    assert len(new) == 1
    (path,) = new
    assert path.parent.name == f"date={NOW:%Y-%m-%d}"
    assert pq.read_table(path).column("merchant_category").to_pylist() == ["offline-only"] * 2
    for old, mtime in before.items():
        assert old.stat().st_mtime_ns == mtime  # never rewritten
    assert categories(client, [901]) == [None]  # offline only
    assert not [p for p in source.rglob(".*")]  # no temporary files left behind


def test_delete_entities(client: OnlineClient) -> None:
    client.push("merchant_stats", merchant_rows([1001, 1002], NOW))
    assert client.delete_entities({"merchant_id": [1001, 4242]}) == 1
    assert categories(client, [1001, 1002]) == [None, "travel"]
    with pytest.raises(InvalidArgumentError, match="no feature view is keyed by"):
        client.delete_entities({"shop_id": [1]})
    with pytest.raises(NotFoundError):
        client.delete_entities({"merchant_id": [1]}, feature_views=["nope"])


def test_delete_entity_cli(applied_demo: QuiverConfig, client: OnlineClient, capsys: pytest.CaptureFixture[str]) -> None:
    client.push("merchant_stats", merchant_rows([1101], NOW))
    code = cli_main(["--repo", str(applied_demo.repo_path), "delete-entity", "merchant_id=1101"])
    assert code == 0
    assert "Deleted 1 online row(s) from merchant_stats" in capsys.readouterr().out
    assert categories(client, [1101]) == [None]


def test_python_ints_push_to_int32_features_when_they_fit(client: OnlineClient) -> None:
    rows = {
        "user_id": [77001], "event_timestamp": [NOW], "age": [33], "account_age_days": [5],
        "credit_score": [700], "is_verified": [True], "country": ["US"], "signup_channel": ["web"],
    }
    client.push("user_profile", rows)
    result = client.get_online_features(features=["user_profile:age"], entities={"user_id": [77001]})
    assert result.values("age") == [33]
    rows["age"] = [2**40]
    with pytest.raises(InvalidArgumentError, match="columns.age: expected int32"):
        client.push("user_profile", rows)


def test_push_keeps_nulls_in_features_and_accepts_integers_for_floats(client: OnlineClient) -> None:
    rows = merchant_rows([1201, 1202], NOW)
    rows["avg_ticket_30d"] = [12, None]  # integers feed a float feature; nulls are fine in features
    client.push("merchant_stats", rows)
    result = client.get_online_features(
        features=["merchant_stats:avg_ticket_30d"], entities={"merchant_id": [1201, 1202]}
    )
    assert result.values("avg_ticket_30d") == [12.0, None]
    assert result.statuses("avg_ticket_30d") == ["PRESENT", "NULL_VALUE"]


def test_push_online_and_offline_share_one_created_time(applied_demo: QuiverConfig, client: OnlineClient) -> None:
    # user_transaction_stats has a created column: the push fills it once for both stores.
    view_rows = {
        "user_id": [88001], "event_timestamp": [NOW], "txn_count_1h": [1], "txn_count_24h": [2],
        "txn_count_7d": [3], "txn_amount_sum_24h": [4.0], "txn_amount_avg_7d": [5.0],
        "txn_amount_max_7d": [6.0], "distinct_merchants_7d": [7], "declined_count_7d": [0],
        "last_txn_country": ["US"],
    }
    client.push("user_transaction_stats", view_rows, to="online_and_offline")
    [path] = (applied_demo.repo_path / "data" / "user_transaction_stats").rglob("push-*.parquet")
    offline = pq.read_table(path)
    assert offline.column_names[-1] == "created" and offline["created"].null_count == 0
    table = RegistryStore(applied_demo.registry_path).latest().view_table("user_transaction_stats")
    store = SqliteOnlineStore(applied_demo.resolve("data/online.db"))
    again = store.write(table, WriteBatch(
        encode_keys(table.view.join_keys, [[88001]]),
        [int(NOW.timestamp() * 1_000_000)],
        [offline["created"].cast(pa.int64())[0].as_py() - 1],
        {"txn_count_24h": [99]},
    ))
    store.close()
    # A row with the same event time and an earlier created time loses: the online
    # row carries exactly the created time written offline.
    assert again.superseded == 1
