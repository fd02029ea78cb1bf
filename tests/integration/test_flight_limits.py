"""Concurrent streams and uploads are bounded: past the limit a call is refused with
RESOURCE_EXHAUSTED, and a slot comes back when a call ends, however it ends.

Streams are held open by not reading them: a training set far larger than any socket or
flow-control buffer cannot finish until its client reads. The tests wait on the server's own
count of calls in flight, never on time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flight_data import (
    make_spine,
    running,
)
from google.rpc import error_details_pb2, status_pb2
from pyarrow import flight

from quiver import TrainingClient
from quiver.convert import pack
from quiver.flight.v1 import flight_pb2 as pb
from quiver_server.config import QuiverConfig

WAIT = 60.0
BIG = 1_000_000  # rows: ~70 MB of training set


@pytest.fixture
def repo(flight_repo: Callable[..., QuiverConfig]) -> QuiverConfig:
    return flight_repo(max_concurrent_streams=2, max_concurrent_uploads=1, partition_rows=BIG,
                       max_spine_rows=BIG, batch_rows=8192)


def refusal(call: Callable[[], object]) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of the RESOURCE_EXHAUSTED status `call` fails with."""
    with pytest.raises(flight.FlightError) as info:
        call()
    status = status_pb2.Status.FromString(info.value.extra_info)
    assert status.code == 8, status  # RESOURCE_EXHAUSTED
    detail = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(detail)
    assert "flight.max_concurrent" in status.message
    return detail


def test_streams_past_the_limit_are_refused_until_one_ends(repo: QuiverConfig) -> None:
    with running(repo) as (server, location), TrainingClient(location) as client:
        info = client.plan(make_spine(BIG), feature_service="model", partition_rows=BIG)
        (endpoint,) = info.endpoints
        connections = [flight.connect(location) for _ in range(3)]
        held = []
        for connection in connections[:2]:
            reader = connection.do_get(endpoint.ticket)
            reader.read_chunk()  # the stream runs, and is then left unread
            held.append(reader)
        assert server.streams.wait_for(lambda n: n == 2, WAIT)
        error = refusal(lambda: connections[2].do_get(endpoint.ticket).read_all())
        assert error.reason == "TOO_MANY_CALLS"
        assert dict(error.metadata) == {"max_concurrent_streams": "2"}
        # A stream read to its end gives its slot back before the client sees the end.
        assert held[0].read_all().num_rows == BIG - 8192
        assert connections[2].do_get(endpoint.ticket).read_all().num_rows == BIG
        # So does a stream its client cancels.
        held[1].cancel()
        assert server.streams.wait_for(lambda n: n == 0, WAIT)
        for connection in connections:
            connection.close()


def test_uploads_past_the_limit_are_refused_until_one_ends(repo: QuiverConfig) -> None:
    spine = make_spine(1000)
    descriptor = flight.FlightDescriptor.for_command(pack(pb.UploadSpineCommand()))
    with running(repo) as (server, location):
        first, second = flight.connect(location), flight.connect(location)
        writer, metadata = first.do_put(descriptor, spine.schema)
        writer.write_table(spine.slice(0, 500))  # an upload in progress
        assert server.uploads.wait_for(lambda n: n == 1, WAIT)

        def another() -> None:
            other, answer = second.do_put(descriptor, spine.schema)
            other.write_table(spine)
            other.done_writing()
            answer.read()
            other.close()

        error = refusal(another)
        assert dict(error.metadata) == {"max_concurrent_uploads": "1"}
        writer.write_table(spine.slice(500))
        writer.done_writing()
        result = pb.UploadSpineResult.FromString(metadata.read().to_pybytes())
        writer.close()
        assert result.rows == 1000
        with TrainingClient(location) as client:
            assert client.upload_spine(spine).rows == 1000
        assert server.uploads.in_use == 0
        first.close()
        second.close()
