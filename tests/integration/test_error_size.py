"""Errors that echo huge input still reach the client as themselves, on gRPC and Flight.

A client refuses trailers over its metadata limit (8 KiB by default) and reports
RESOURCE_EXHAUSTED instead of the error; statuses must stay well under that.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from urllib.parse import quote

import grpc
import pyarrow as pa
import pytest
from pyarrow import flight

from quiver import OnlineClient
from quiver.convert import pack
from quiver.errors import InvalidArgumentError, NotFoundError, QuiverError
from quiver.flight.v1 import flight_pb2
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc
from quiver.status import from_flight_error, from_rpc_error
from quiver_server.config import QuiverConfig
from quiver_server.serving.server import create_server

# Half the client's default limit: what a status may use on the wire.
WIRE_BUDGET = 4096


@pytest.fixture
def target(applied_demo: QuiverConfig) -> Iterator[str]:
    app, port = create_server(applied_demo, "127.0.0.1", 0)
    with app:
        yield f"127.0.0.1:{port}"


def grpc_failure(call: Callable[[], object]) -> tuple[QuiverError, int]:
    """The typed error of a failed call and the bytes its status took in the trailers."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    message = error.details() or ""  # type: ignore[attr-defined]
    size = len(quote(message, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~"))
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        size += len(key) + len(base64.b64encode(value) if isinstance(value, bytes) else value)
    return from_rpc_error(error), size  # type: ignore[arg-type]


@pytest.mark.parametrize("letter", ["s", "\u00e9"], ids=["ascii", "non-ascii"])
def test_huge_service_name_is_not_found(target: str, letter: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.FeatureServingServiceStub(channel)
        request = pb.GetOnlineFeaturesRequest(feature_service=letter * 3000)
        request.entities["user_id"].int64_values.values.append(1)
        error, size = grpc_failure(lambda: stub.GetOnlineFeatures(request, timeout=10))
    assert isinstance(error, NotFoundError), (error.grpc_status, error.message)
    assert "more characters" in error.message
    assert size < WIRE_BUDGET, size


def test_fifty_unknown_long_key_names_are_invalid_argument(target: str) -> None:
    entities = {"user_id": [1]} | {f"k{i:02d}" + "x" * 300: [1] for i in range(50)}
    with OnlineClient(target) as client, pytest.raises(InvalidArgumentError) as info:
        client.get_online_features(features=["user_profile:age"], entities=entities)
    error = info.value
    fields = [v.field for v in error.violations]
    assert fields[0].startswith("entities.k") and "more characters" in fields[0]
    assert any(" more " in v.description for v in error.violations)  # says some were left out
    assert error.details is not None and len(error.details) < WIRE_BUDGET


def test_push_with_many_long_unknown_columns_is_invalid_argument(target: str) -> None:
    rows = {
        "merchant_id": [1], "event_timestamp": [datetime.now(UTC)], "merchant_category": ["x"],
        "chargeback_rate_30d": [0.1], "merchant_txn_count_24h": [1], "avg_ticket_30d": [1.0],
        "is_high_risk": [False],
    } | {f"extra{i}" + "y" * 2000: [1] for i in range(60)}
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.FeatureServingServiceStub(channel)
        sink = pa.BufferOutputStream()
        table = pa.table(rows)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        request = pb.PushFeaturesRequest(feature_view="merchant_stats", arrow_ipc=sink.getvalue().to_pybytes())
        error, size = grpc_failure(lambda: stub.PushFeatures(request, timeout=10))
    assert isinstance(error, InvalidArgumentError), (error.grpc_status, error.message)
    assert error.violations and error.violations[0].field.startswith("columns.extra0y")
    assert size < WIRE_BUDGET, size


def test_huge_names_over_flight(
    applied_demo: QuiverConfig, flight_server: Callable[..., AbstractContextManager[str]]
) -> None:
    with flight_server(applied_demo) as location:
        client = flight.connect(location)
        for command in (
            flight_pb2.TrainingSetCommand(feature_service="\u00e9" * 3000),
            flight_pb2.TrainingSetCommand(
                features=flight_pb2.FeatureList(refs=[f"view{i}:" + "f" * 500 for i in range(50)])
            ),
        ):
            descriptor = flight.FlightDescriptor.for_command(pack(command))
            with pytest.raises(flight.FlightError) as info:
                client.get_flight_info(descriptor)
            error = from_flight_error(info.value)
            assert isinstance(error, NotFoundError), (error.grpc_status, error.message)
            assert len(info.value.extra_info) < WIRE_BUDGET
            assert len(str(info.value).encode()) < WIRE_BUDGET
        client.close()
