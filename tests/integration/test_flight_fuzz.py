"""Bounded fuzzing of a real Flight server: bad input of every kind gets a clean answer.

Random bytes, random and mutated protobuf commands and tickets, random list_flights criteria,
random actions and random spine schemas go to one server on an ephemeral port. Every answer must
be a rich status (google.rpc.Status) whose code is never INTERNAL, UNKNOWN or UNAVAILABLE, whose
texts hold no traceback, source file or server path, and which stays under 8 KiB of metadata.
Examples are derandomized so CI sees the same inputs every run, a few seconds per test; set
QUIVER_TEST_FUZZ_EXAMPLES=2000 for a longer, random search.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from flight_data import (
    make_spine,
)
from flight_wire import action, call, criteria, descriptor, leaks, problems, ticket
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyarrow import flight

from quiver.convert import pack
from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.server import TrainingSetFlightServer, create_flight_server
from quiver_server.config import QuiverConfig

_EXAMPLES = int(os.environ.get("QUIVER_TEST_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXAMPLES or 40, deadline=None, derandomize=not _EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                database=None)
SERVER_FAULTS = {2, 13, 14}  # UNKNOWN, INTERNAL, UNAVAILABLE


class Target:
    """One running server, and what the fuzzers start from."""

    def __init__(self, config: QuiverConfig, server: TrainingSetFlightServer, port: int) -> None:
        self.config = config
        self.server = server
        self.location = f"grpc://127.0.0.1:{port}"
        self.address = f"127.0.0.1:{port}"
        self.paths = [str(config.repo_path), config.offline_root, str(config.registry_path),
                      str(Path(__file__).resolve().parents[2])]
        client = flight.connect(self.location)
        spine = make_spine(50)
        writer, reader = client.do_put(
            flight.FlightDescriptor.for_command(pack(pb.UploadSpineCommand())), spine.schema)
        writer.write_table(spine)
        writer.done_writing()
        self.spine_id = pb.UploadSpineResult.FromString(reader.read().to_pybytes()).spine_id
        writer.close()
        command = pb.TrainingSetCommand(feature_service="model", partition_rows=20)
        command.spine.spine_id = self.spine_id
        self.command = pack(command)
        info = client.get_flight_info(flight.FlightDescriptor.for_command(self.command))
        self.ticket = info.endpoints[0].ticket.ticket
        client.close()


@pytest.fixture
def target(flight_repo: Callable[..., QuiverConfig]) -> Iterator[Target]:
    # One server per test: hypothesis runs every example of a test against it.
    config = flight_repo(partition_rows=1000, batch_rows=256, max_spine_rows=5000)
    (Path(config.offline_root) / "spines").mkdir()
    server, port = create_flight_server(config)
    with server:
        yield Target(config, server, port)


def assert_clean_wire(target: Target, method: str, request: bytes) -> None:
    answer = call(target.address, method, request)
    assert problems(answer, target.paths) == [], (method, request[:200])


def assert_clean_flight_error(target: Target, error: BaseException) -> None:
    """A pyarrow-client failure: a rich status inside, and nothing that must not leak."""
    text = str(error)
    assert leaks(text, target.paths) == [], text[:500]
    details = getattr(error, "extra_info", None)
    assert details, f"no google.rpc.Status: {text[:300]}"
    status = status_pb2.Status.FromString(details)
    assert status.code not in SERVER_FAULTS, status.message[:300]
    assert len(details) < 8192 and len(status.message.encode()) < 8192
    assert leaks(status.message + str(status), target.paths) == []


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` with bytes flipped, cut, inserted or repeated."""

    def mutate(draw: Callable[..., Any]) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate"]))
            if not out:
                out = bytearray(draw(st.binary(min_size=1, max_size=8)))
            at = draw(st.integers(0, len(out) - 1))
            if kind == "flip":
                out[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "cut":
                del out[at:at + draw(st.integers(1, 8))]
            elif kind == "insert":
                out[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif kind == "repeat":
                out[at:at] = out[at:at + draw(st.integers(1, 64))] * draw(st.integers(2, 50))
            else:
                del out[at:]
        return bytes(out)

    return st.composite(lambda draw: mutate(draw))()


NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["\x00", "/", "..", "\\", "a", "é", "\udcff", ":", "_", "."]),
             max_size=30).map("".join),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "/", "é", "\x00", "../"]),
              st.integers(200, 20_000)),
)


# Protobuf strings must be UTF-8; other bytes are sent by `test_non_utf8_strings_in_commands`.
PROTO_TEXT = NASTY_TEXT.map(lambda t: t.encode("utf-8", "replace").decode())


def commands(spine_id: str) -> st.SearchStrategy[pb.TrainingSetCommand]:
    @st.composite
    def build(draw: Callable[..., Any]) -> pb.TrainingSetCommand:
        command = pb.TrainingSetCommand(
            full_feature_names=draw(st.booleans()),
            timestamp_column=draw(st.one_of(st.just(""), st.just("event_timestamp"), PROTO_TEXT)),
            partition_rows=draw(st.integers(-(2**63), 2**63 - 1)),
        )
        selection = draw(st.sampled_from(["service", "features", "none"]))
        if selection == "service":
            command.feature_service = draw(st.one_of(st.just("model"), PROTO_TEXT))
        elif selection == "features":
            refs = draw(st.lists(st.one_of(
                st.sampled_from(["user_stats:spend", "merchant_stats:risk", "user_stats:*"]),
                PROTO_TEXT), max_size=60))
            command.features.refs.extend(refs)
        spine = draw(st.sampled_from(["id", "path", "none"]))
        if spine == "id":
            command.spine.spine_id = draw(st.one_of(st.just(spine_id), PROTO_TEXT))
        elif spine == "path":
            command.spine.parquet_path = draw(PROTO_TEXT)
        return command

    return build()


@FUZZ
@given(data=st.binary(max_size=300), method=st.sampled_from(["GetFlightInfo", "GetSchema"]))
def test_random_bytes_as_commands(target: Target, data: bytes, method: str) -> None:
    assert_clean_wire(target, method, descriptor(data))


@FUZZ
@given(data=st.data(), method=st.sampled_from(["GetFlightInfo", "GetSchema"]))
def test_mutated_commands(target: Target, data: st.DataObject, method: str) -> None:
    assert_clean_wire(target, method, descriptor(data.draw(mutations(target.command))))


@FUZZ
@given(data=st.data(), method=st.sampled_from(["GetFlightInfo", "GetSchema"]))
def test_random_training_set_commands(target: Target, data: st.DataObject, method: str) -> None:
    command = data.draw(commands(target.spine_id))
    assert_clean_wire(target, method, descriptor(pack(command)))


@FUZZ
@given(field=st.sampled_from(["feature_service", "timestamp_column", "spine_id", "parquet_path",
                              "ref"]),
       junk=st.binary(min_size=1, max_size=20).filter(lambda b: not _utf8(b)),
       method=st.sampled_from(["GetFlightInfo", "GetSchema"]))
def test_non_utf8_strings_in_commands(target: Target, field: str, junk: bytes, method: str) -> None:
    marker = "MARKERMARKER"
    command = pb.TrainingSetCommand(timestamp_column="event_timestamp")
    if field in ("feature_service", "timestamp_column"):
        setattr(command, field, marker)
    elif field == "ref":
        command.features.refs.append(marker)
    else:
        setattr(command.spine, field, marker)
    if field != "spine_id" and field != "parquet_path":
        command.spine.spine_id = target.spine_id
    if field != "feature_service" and field != "ref":
        command.feature_service = "model"
    raw = pack(command).replace(marker.encode(), junk.ljust(len(marker), b"\xff")[:len(marker)])
    assert_clean_wire(target, method, descriptor(raw))


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@FUZZ
@given(data=st.data())
def test_random_and_mutated_tickets(target: Target, data: st.DataObject) -> None:
    raw = data.draw(st.one_of(st.binary(max_size=300), mutations(target.ticket)))
    assert_clean_wire(target, "DoGet", ticket(raw))


@FUZZ
@given(expression=st.one_of(st.binary(max_size=300),
                            st.builds(lambda p: pb.ListFlightsCriteria(name_prefix=p)
                                      .SerializeToString(), st.text(max_size=50))))
def test_random_list_flights_criteria(target: Target, expression: bytes) -> None:
    assert_clean_wire(target, "ListFlights", criteria(expression))


@FUZZ
@given(kind=NASTY_TEXT, body=st.binary(max_size=200))
def test_random_actions(target: Target, kind: str, body: bytes) -> None:
    try:
        request = action(kind, body)
    except UnicodeEncodeError:
        request = action(kind.encode("utf-8", "replace").decode(), body)
    assert_clean_wire(target, "DoAction", request)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_upload_descriptors(target: Target, data: bytes) -> None:
    client = flight.connect(target.location)
    try:
        writer, reader = client.do_put(flight.FlightDescriptor.for_command(data),
                                       pa.schema([("a", pa.int64())]))
        writer.write_table(pa.table({"a": [1, 2]}))
        writer.done_writing()
        reader.read()
        writer.close()
    except flight.FlightError as error:
        assert_clean_flight_error(target, error)
    finally:
        client.close()


ARROW_TYPES = st.sampled_from([
    pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64(),
    pa.float16(), pa.float32(), pa.float64(), pa.bool_(), pa.string(), pa.large_string(),
    pa.binary(), pa.binary(4), pa.date32(), pa.time64("us"), pa.duration("s"),
    pa.timestamp("s"), pa.timestamp("us", tz="UTC"), pa.timestamp("ns", tz="Europe/Paris"),
    pa.decimal128(12, 3), pa.list_(pa.int64()), pa.struct([("x", pa.int32())]),
    pa.dictionary(pa.int8(), pa.string()), pa.null(), pa.map_(pa.string(), pa.int64()),
])
COLUMN_NAMES = st.one_of(
    st.sampled_from(["user_id", "merchant_id", "event_timestamp", "label"]),
    st.text(max_size=20),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "\x00", "é"]), st.integers(100, 5000)),
)


@st.composite
def spines(draw: Callable[..., Any]) -> pa.Table:
    fields = draw(st.lists(st.tuples(COLUMN_NAMES, ARROW_TYPES), min_size=0, max_size=6))
    rows = draw(st.integers(0, 4))
    columns = [pa.nulls(rows, type=t) for _, t in fields]
    return pa.Table.from_arrays(columns, schema=pa.schema([pa.field(n, t) for n, t in fields]))


@FUZZ
@given(spine=spines(), timestamp_column=st.one_of(st.just(""), COLUMN_NAMES))
def test_random_spine_schemas(target: Target, spine: pa.Table, timestamp_column: str) -> None:
    client = flight.connect(target.location)
    try:
        command = pb.UploadSpineCommand(timestamp_column=timestamp_column)
        writer, reader = client.do_put(flight.FlightDescriptor.for_command(pack(command)),
                                       spine.schema)
        writer.write_table(spine)
        writer.done_writing()
        answer = reader.read()
        writer.close()  # raises the server's error, if any
        result = pb.UploadSpineResult.FromString(answer.to_pybytes())
        plan = pb.TrainingSetCommand(feature_service="model")
        plan.spine.spine_id = result.spine_id
        client.get_flight_info(flight.FlightDescriptor.for_command(pack(plan)))
    except flight.FlightError as error:
        assert_clean_flight_error(target, error)
    finally:
        client.close()
