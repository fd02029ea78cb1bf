"""PushFeatures and DeleteEntities refuse bad input as INVALID_ARGUMENT, through a real server.

Requests are sent with the raw stub where the client would refuse them itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pyarrow as pa
import pytest

from quiver import OnlineClient
from quiver.errors import InvalidArgumentError
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc
from quiver.status import from_rpc_error
from quiver_server.config import QuiverConfig
from quiver_server.serving.server import create_server

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def target(applied_demo: QuiverConfig) -> Iterator[str]:
    app, port = create_server(applied_demo, "127.0.0.1", 0)
    with app:
        yield f"127.0.0.1:{port}"


@pytest.fixture
def stub(target: str) -> Iterator[pb_grpc.FeatureServingServiceStub]:
    with grpc.insecure_channel(target) as channel:
        yield pb_grpc.FeatureServingServiceStub(channel)


def ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def merchant_table(ids: list[int], when: datetime = NOW) -> pa.Table:
    n = len(ids)
    return pa.table({
        "merchant_id": ids,
        "event_timestamp": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
        "merchant_category": ["travel"] * n,
        "chargeback_rate_30d": [0.01] * n,
        "merchant_txn_count_24h": [5] * n,
        "avg_ticket_30d": [12.5] * n,
        "is_high_risk": [False] * n,
    })


def push_error(stub: pb_grpc.FeatureServingServiceStub, request: pb.PushFeaturesRequest) -> InvalidArgumentError:
    with pytest.raises(grpc.RpcError) as info:
        stub.PushFeatures(request, timeout=10)
    error = from_rpc_error(info.value)  # type: ignore[arg-type]
    assert error.grpc_status == grpc.StatusCode.INVALID_ARGUMENT, (error.grpc_status, error.message)
    assert isinstance(error, InvalidArgumentError)
    return error


def test_unknown_push_target_is_invalid_argument(stub: pb_grpc.FeatureServingServiceStub) -> None:
    request = pb.PushFeaturesRequest(
        feature_view="merchant_stats", arrow_ipc=ipc(merchant_table([1])), to=99  # type: ignore[arg-type]
    )
    error = push_error(stub, request)
    assert [v.field for v in error.violations] == ["to"]
    assert "99 is not a push target" in error.message and "PUSH_TARGET_ONLINE" in error.message


@pytest.mark.parametrize(
    "payload",
    [
        b"not arrow at all",
        ipc(merchant_table([1]))[:-20],  # a stream cut short
        b"\xff\xff\xff\xff" + b"\x10\x00\x00\x00" + b"\x00" * 16,  # a continuation marker, junk
        ipc(merchant_table([1]))[:8],
    ],
    ids=["junk", "truncated", "bad-flatbuffer", "header-only"],
)
def test_malformed_arrow_ipc_is_invalid_argument(
    stub: pb_grpc.FeatureServingServiceStub, payload: bytes
) -> None:
    error = push_error(stub, pb.PushFeaturesRequest(feature_view="merchant_stats", arrow_ipc=payload))
    assert [v.field for v in error.violations] == ["arrow_ipc"]


def test_repeated_column_names_are_invalid_argument(stub: pb_grpc.FeatureServingServiceStub) -> None:
    table = merchant_table([1])
    doubled = pa.Table.from_arrays(
        [*table.columns, table["merchant_category"]], names=[*table.column_names, "merchant_category"]
    )
    error = push_error(stub, pb.PushFeaturesRequest(feature_view="merchant_stats", arrow_ipc=ipc(doubled)))
    assert "repeated: merchant_category" in error.message


def test_good_push_still_works(target: str) -> None:
    with OnlineClient(target) as client:
        assert client.push("merchant_stats", merchant_table([5])).rows == 1


def test_delete_entities_is_capped(applied_demo: QuiverConfig, target: str) -> None:
    cap = applied_demo.serving.max_delete_entities
    with OnlineClient(target) as client:
        client.push("merchant_stats", merchant_table([7]))
        with pytest.raises(InvalidArgumentError) as info:
            client.delete_entities({"merchant_id": list(range(cap + 1))})
        assert f"at most {cap} per request" in info.value.message
        assert [v.field for v in info.value.violations] == ["entities"]
        assert client.get_online_features(  # nothing was deleted
            features=["merchant_stats:merchant_category"], entities={"merchant_id": [7]}
        ).values("merchant_category") == ["travel"]
        assert client.delete_entities({"merchant_id": list(range(cap))}) == 1


def test_push_larger_than_one_message_is_split_and_summed(target: str) -> None:
    ids = list(range(100_000, 140_000))

    def table(when: datetime) -> pa.Table:
        return merchant_table(ids, when).set_column(
            2, "merchant_category", pa.array([f"{i:0>150}" for i in ids])
        )

    assert table(NOW).nbytes > 5 * 1024 * 1024  # more than the server's 4 MiB message limit
    with OnlineClient(target, timeout=60) as client:
        result = client.push("merchant_stats", table(NOW))
        assert (result.rows, result.superseded) == (len(ids), 0)
        older = client.push("merchant_stats", table(NOW - timedelta(hours=1)))
        assert (older.rows, older.superseded) == (len(ids), len(ids))
        sample = [ids[0], ids[len(ids) // 2], ids[-1]]
        values = client.get_online_features(
            features=["merchant_stats:merchant_category"], entities={"merchant_id": sample}
        ).values("merchant_category")
    assert values == [f"{i:0>150}" for i in sample]


def _online_categories(client: OnlineClient, ids: list[int]) -> list[object]:
    return client.get_online_features(
        features=["merchant_stats:merchant_category"], entities={"merchant_id": ids}
    ).values("merchant_category")


@pytest.mark.parametrize(
    "when",
    [datetime(9999, 1, 1, tzinfo=UTC), NOW + timedelta(hours=1)],
    ids=["year-9999", "one-hour-ahead"],
)
def test_push_from_the_future_is_refused_and_writes_nothing(
    applied_demo: QuiverConfig, target: str, when: datetime
) -> None:
    table = merchant_table([31, 32, 33]).set_column(
        1, "event_timestamp", pa.array([NOW, when, when], pa.timestamp("us", tz="UTC"))
    )
    with OnlineClient(target) as client:
        with pytest.raises(InvalidArgumentError) as info:
            client.push("merchant_stats", table, to="online_and_offline")
        [violation] = info.value.violations
        assert violation.field == "columns.event_timestamp"
        assert violation.description.startswith("row 1: ") and "in the future" in violation.description
        assert "(1 more row(s) like it)" in violation.description
        assert _online_categories(client, [31, 32, 33]) == [None, None, None]
        # A clock a little ahead of the server's is fine.
        near = merchant_table([34], NOW + timedelta(seconds=60))
        assert client.push("merchant_stats", near).rows == 1
    assert not list((applied_demo.repo_path / "data" / "merchant_stats").rglob("push-*.parquet"))


def test_created_time_from_the_future_is_refused(target: str) -> None:
    rows = {
        "user_id": [88002], "event_timestamp": [NOW], "created": [datetime(9999, 1, 1, tzinfo=UTC)],
        "txn_count_1h": [1], "txn_count_24h": [2], "txn_count_7d": [3],
        "txn_amount_sum_24h": [4.0], "txn_amount_avg_7d": [5.0], "txn_amount_max_7d": [6.0],
        "distinct_merchants_7d": [7], "declined_count_7d": [0], "last_txn_country": ["US"],
    }
    with OnlineClient(target) as client, pytest.raises(InvalidArgumentError) as info:
        client.push("user_transaction_stats", rows)
    assert [v.field for v in info.value.violations] == ["columns.created"]


@pytest.mark.parametrize("micros", [2**63 - 1, -(2**63)], ids=["int64-max", "int64-min"])
def test_unrepresentable_times_over_typed_columns(
    stub: pb_grpc.FeatureServingServiceStub, micros: int
) -> None:
    request = pb.PushFeaturesRequest(feature_view="merchant_stats")
    request.columns["merchant_id"].int64_values.values.append(1)
    request.columns["event_timestamp"].timestamp_values.values.append(micros)
    request.columns["merchant_category"].string_values.values.append("x")
    request.columns["chargeback_rate_30d"].double_values.values.append(0.1)
    request.columns["merchant_txn_count_24h"].int64_values.values.append(1)
    request.columns["avg_ticket_30d"].double_values.values.append(1.0)
    request.columns["is_high_risk"].bool_values.values.append(False)
    error = push_error(stub, request)
    assert [v.field for v in error.violations] == ["columns.event_timestamp"]
    assert "microseconds since the epoch is outside" in error.violations[0].description


def test_seconds_timestamps_that_overflow_microseconds(stub: pb_grpc.FeatureServingServiceStub) -> None:
    table = merchant_table([1]).set_column(
        1, "event_timestamp", pa.array([2**62], pa.timestamp("s", tz="UTC"))
    )
    error = push_error(stub, pb.PushFeaturesRequest(feature_view="merchant_stats", arrow_ipc=ipc(table)))
    assert [v.field for v in error.violations] == ["columns.event_timestamp"]
