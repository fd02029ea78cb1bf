"""Training sets through a real Arrow Flight server, over real Parquet files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flight_data import (
    T0,
    US,
    expected,
    make_spine,
    merchant,
    merchant_stats,
    model,
    user,
    user_stats,
    write_history,
)
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from pyarrow import flight

from quiver import OfflineSpine, TrainingClient, TrainingProgress
from quiver.convert import pack
from quiver.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from quiver.flight.v1 import flight_pb2 as pb
from quiver_flight.pit import PointInTimeEngine
from quiver_server.config import QuiverConfig
from quiver_server.registry.store import RegistryStore

Server = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def repo(tmp_path: Path, make_config: Callable[..., QuiverConfig],
         apply_objects: Callable[..., Any]) -> QuiverConfig:
    config = make_config(tmp_path, partition_rows=1000, batch_rows=256, max_spine_rows=5000)
    write_history(Path(config.offline_root))
    apply_objects(config, [user, merchant], [user_stats, merchant_stats], [model])
    return config


@pytest.fixture
def location(repo: QuiverConfig, flight_server: Server) -> Iterator[str]:
    with flight_server(repo) as loc:
        yield loc


@pytest.fixture
def client(location: str) -> Iterator[TrainingClient]:
    with TrainingClient(location, max_workers=3) as c:
        yield c


def test_training_set_in_one_call_over_several_endpoints(repo: QuiverConfig, client: TrainingClient) -> None:
    spine = make_spine(3500)
    info = client.plan(spine, feature_service="model", partition_rows=1000)
    assert len(info.endpoints) == 4 and info.total_records == 3500 and info.ordered
    result = client.fetch(info)
    assert result.equals(expected(repo, spine))
    assert result.schema.names == [*spine.schema.names, "spend", "txns", "country", "risk"]
    assert result.select(spine.schema.names).equals(spine)
    # The default split fetches max_workers partitions at once, same rows.
    assert client.get_training_set(spine, feature_service="model").equals(result)


def test_streaming_reader_pandas_and_parquet_spines(repo: QuiverConfig, client: TrainingClient,
                                                    tmp_path: Path) -> None:
    spine = make_spine(1200, seed=7)
    want = expected(repo, spine, full_feature_names=True)
    reader = client.get_training_set_reader(spine, feature_service="model", full_feature_names=True,
                                            partition_rows=300)
    batches = list(reader)
    assert all(b.num_rows <= 256 for b in batches)
    assert pa.Table.from_batches(batches).equals(want)
    from_pandas = client.get_training_set(spine.to_pandas(), feature_service="model",
                                          full_feature_names=True)
    # pandas 3 hands strings over as large_string; the spine column keeps that type.
    assert from_pandas.schema.field("merchant_id").type == pa.large_string()
    assert from_pandas.cast(want.schema).equals(want)
    pq.write_table(spine, tmp_path / "spine.parquet")
    from_path = client.get_training_set(tmp_path / "spine.parquet", feature_service="model",
                                        full_feature_names=True)
    assert from_path.equals(want)
    (tmp_path / "parts").mkdir()
    pq.write_table(spine.slice(0, 500), tmp_path / "parts" / "a.parquet")
    pq.write_table(spine.slice(500), tmp_path / "parts" / "b.parquet")
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    from_directory = client.get_training_set(str(tmp_path / "parts"), feature_service="model",
                                             full_feature_names=True)
    assert from_directory.equals(want)


def test_progress_reports_rows_as_they_arrive(repo: QuiverConfig, client: TrainingClient) -> None:
    spine = make_spine(2500, seed=3)
    seen: list[TrainingProgress] = []
    table = client.get_training_set(spine, feature_service="model", partition_rows=1000,
                                    progress=seen.append)
    assert table.num_rows == 2500
    assert [p.rows for p in seen] == sorted(p.rows for p in seen)  # cumulative
    assert seen[-1].rows == seen[-1].total_rows == 2500
    assert seen[-1].batches == len(seen)
    streamed: list[TrainingProgress] = []
    reader = client.get_training_set_reader(spine, feature_service="model", partition_rows=1000,
                                            progress=streamed.append)
    rows = 0
    for batch in reader:
        rows += batch.num_rows
        assert streamed[-1].rows == rows  # reported as each batch is handed over
    assert streamed[-1].total_rows == 2500
    # Off by default: nothing to call, nothing printed.
    assert client.get_training_set(spine, feature_service="model").num_rows == 2500


def test_a_reader_closed_early_stops_fetching(client: TrainingClient) -> None:
    import threading

    reader = client.get_training_set_reader(make_spine(3000, seed=4), feature_service="model",
                                            partition_rows=500)
    assert reader.read_next_batch().num_rows > 0
    reader.close()
    del reader
    import gc

    gc.collect()
    fetchers = [t for t in threading.enumerate() if t.name.startswith("quiver-fetch-")]
    for thread in fetchers:
        thread.join(30)
    assert not [t for t in fetchers if t.is_alive()]


def test_features_by_reference_and_offline_spine(repo: QuiverConfig, client: TrainingClient) -> None:
    spine = make_spine(500, seed=3)
    (Path(repo.offline_root) / "spines").mkdir()
    pq.write_table(spine, Path(repo.offline_root) / "spines" / "labels.parquet")
    got = client.get_training_set(OfflineSpine("labels.parquet"),
                                  features=["merchant_stats:volume", "user_stats:txns"])
    assert got.schema.names[-2:] == ["volume", "txns"]
    snapshot = RegistryStore(repo.registry_path).latest()
    refs = snapshot.resolve(features=["merchant_stats:volume", "user_stats:txns"])
    assert got.equals(PointInTimeEngine(repo.offline_root).join_table(spine, refs))


def test_tickets_are_reusable_and_served_by_any_replica(repo: QuiverConfig, flight_server: Server) -> None:
    spine = make_spine(2100, seed=5)
    with (
        flight_server(repo) as first, flight_server(repo) as second,
        TrainingClient(first) as a, TrainingClient(second) as b,
    ):
        info = a.plan(spine, feature_service="model", partition_rows=700)
        tickets = [e.ticket for e in info.endpoints]
        raw = flight.connect(second)
        from_b = [raw.do_get(t).read_all() for t in tickets]
        again = [raw.do_get(t).read_all() for t in reversed(tickets)][::-1]
        raw.close()
        assert len(tickets) == 3
        assert all(x.equals(y) for x, y in zip(from_b, again, strict=True))
        assert pa.concat_tables(from_b).equals(expected(repo, spine))
        assert b.fetch(info).equals(pa.concat_tables(from_b))


def test_list_flights_and_get_schema(client: TrainingClient, location: str) -> None:
    sets = {info.name: (info, schema) for info, schema in client.list_feature_sets()}
    assert set(sets) == {"model", "user_stats", "merchant_stats"}
    info, schema = sets["model"]
    assert info.kind == pb.FEATURE_SET_KIND_FEATURE_SERVICE
    assert list(info.join_keys) == ["user_id", "merchant_id"]
    assert schema.names == ["user_id", "merchant_id", "event_timestamp", "user_stats__spend",
                            "user_stats__txns", "user_stats__country", "merchant_stats__risk"]
    assert [i.name for i, _ in client.list_feature_sets("user")] == ["user_stats"]
    schema = client.get_schema(features=["user_stats:txns"])
    assert schema.names == ["user_id", "event_timestamp", "txns"]
    # The listed descriptor is a ready-made command.
    raw = flight.connect(location)
    listed = next(f for f in raw.list_flights() if f.schema.names[-1] == "merchant_stats__risk"
                  and "model" in f.app_metadata.decode(errors="ignore"))
    assert raw.get_schema(listed.descriptor).schema.equals(listed.schema)
    raw.close()


def test_empty_spine_gives_an_empty_training_set(client: TrainingClient) -> None:
    got = client.get_training_set(make_spine(0), feature_service="model")
    assert got.num_rows == 0 and got.schema.names[-1] == "risk"


BAD_SPINES = {
    "missing join key": (lambda s: s.drop_columns(["merchant_id"]), "spine.merchant_id",
                         "SPINE_MISSING_JOIN_KEY"),
    "missing timestamp": (lambda s: s.rename_columns(["user_id", "merchant_id", "ts", "label"]),
                          "spine.event_timestamp", "SPINE_MISSING_TIMESTAMP"),
    "wrong key type": (lambda s: s.set_column(0, "user_id", s["user_id"].cast(pa.string())),
                       "spine.user_id", "SPINE_KEY_TYPE"),
    "naive timestamps": (lambda s: s.set_column(2, "event_timestamp",
                                                s["event_timestamp"].cast(pa.timestamp("us"))),
                         "spine.event_timestamp", "NAIVE_TIMESTAMP"),
    "string timestamps": (lambda s: s.set_column(2, "event_timestamp",
                                                 s["event_timestamp"].cast(pa.string())),
                          "spine.event_timestamp", "SPINE_TIMESTAMP_TYPE"),
    "null timestamps": (lambda s: s.set_column(2, "event_timestamp", pa.array(
                            [None, *s["event_timestamp"].to_pylist()[1:]], US)),
                        "spine.event_timestamp", "SPINE_NULL_TIMESTAMP"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPINES))
def test_bad_spines_are_refused_naming_the_problem(client: TrainingClient, case: str) -> None:
    change, field, reason = BAD_SPINES[case]
    with pytest.raises(InvalidArgumentError) as info:
        client.get_training_set(change(make_spine(10)), feature_service="model")
    assert info.value.reason == reason
    assert [v.field for v in info.value.violations] == [field]
    assert field.split(".")[1] in info.value.message
    # The server is still up and answers a good request.
    assert client.get_training_set(make_spine(5), feature_service="model").num_rows == 5


def test_naive_timestamps_uploaded_without_a_check_are_refused_when_planned(
    client: TrainingClient, location: str
) -> None:
    spine = make_spine(5)
    spine = spine.set_column(2, "event_timestamp", spine["event_timestamp"].cast(pa.timestamp("us")))
    with pytest.raises(InvalidArgumentError, match="naive"):
        client.upload_spine(spine)  # the client asks the server to check the column
    raw = flight.connect(location)
    writer, reader = raw.do_put(
        flight.FlightDescriptor.for_command(pack(pb.UploadSpineCommand())), spine.schema
    )
    writer.write_table(spine)
    writer.done_writing()
    result = pb.UploadSpineResult.FromString(reader.read().to_pybytes())
    writer.close()
    command = pb.TrainingSetCommand(feature_service="model")
    command.spine.spine_id = result.spine_id
    with pytest.raises(flight.FlightServerError) as error:
        raw.get_flight_info(flight.FlightDescriptor.for_command(pack(command)))
    raw.close()
    status = status_pb2.Status.FromString(error.value.extra_info)
    bad = error_details_pb2.BadRequest()
    assert status.code == 3 and "naive" in status.message
    assert status.details[1].Unpack(bad)
    assert bad.field_violations[0].field == "spine.event_timestamp"



def test_unknown_features_and_services(client: TrainingClient) -> None:
    spine = make_spine(5)
    with pytest.raises(NotFoundError, match="no feature 'nope'") as info:
        client.get_training_set(spine, features=["user_stats:nope"])
    assert info.value.reason == "FEATURE_NOT_FOUND"
    with pytest.raises(NotFoundError, match="'ghost'"):
        client.get_training_set(spine, feature_service="ghost")
    with pytest.raises(InvalidArgumentError, match="view:feature"):
        client.get_training_set(spine, features=["no_colon"])


def test_spine_over_the_limit(client: TrainingClient) -> None:
    with pytest.raises(ResourceExhaustedError, match="max_spine_rows") as info:
        client.get_training_set(make_spine(5001), feature_service="model")
    assert info.value.reason == "SPINE_TOO_LARGE"
    assert client.get_training_set(make_spine(5000), feature_service="model").num_rows == 5000


def test_forged_and_garbled_tickets(client: TrainingClient, location: str) -> None:
    info = client.plan(make_spine(50), feature_service="model")
    ticket = pb.TrainingSetTicket()
    wrapper = _unpack_any(info.endpoints[0].ticket.ticket)
    wrapper.Unpack(ticket)
    partition = pb.TrainingSetPartition.FromString(ticket.partition)
    partition.row_count = 10**6  # ask for more than was planned
    forged = pb.TrainingSetTicket(partition=partition.SerializeToString(), signature=ticket.signature)
    raw = flight.connect(location)
    with pytest.raises(flight.FlightServerError) as error:
        raw.do_get(flight.Ticket(pack(forged))).read_all()
    status = status_pb2.Status.FromString(error.value.extra_info)
    assert status.code == 3 and "signature" in status.message
    for garbage in (b"", b"\x00\xff garbage", pack(pb.UploadSpineCommand())):
        with pytest.raises(flight.FlightServerError) as error:
            raw.do_get(flight.Ticket(garbage)).read_all()
        status = status_pb2.Status.FromString(error.value.extra_info)
        detail = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(detail)
        assert status.code == 3 and detail.reason == "INVALID_TICKET" and detail.domain == "quiver.dev"
    raw.close()
    assert client.fetch(info).num_rows == 50


def _unpack_any(data: bytes) -> Any:
    return any_pb2.Any.FromString(data)


def test_expired_spines_and_stale_tickets(repo: QuiverConfig, flight_server: Server, fake_clock: Any) -> None:
    from quiver_flight.server import create_flight_server

    server, port = create_flight_server(repo, clock=fake_clock)
    with server, TrainingClient(f"grpc://127.0.0.1:{port}") as client:
        handle = client.upload_spine(make_spine(20))
        info = client.plan(handle, feature_service="model")
        assert client.fetch(info).num_rows == 20
        fake_clock.now += repo.flight.spine_ttl_seconds + 1
        with pytest.raises(FailedPreconditionError, match="stale") as error:
            client.fetch(info)
        assert error.value.reason == "STALE_TICKET"
        with pytest.raises(NotFoundError, match="expired") as missing:
            client.plan(handle, feature_service="model")
        assert missing.value.reason == "SPINE_EXPIRED"
        with pytest.raises(NotFoundError, match="does not exist"):
            client.plan(handle, feature_service="model")
        # The server's sweeper deletes expired spines (woken here rather than waited for).
        other = client.upload_spine(make_spine(5))
        fake_clock.now += repo.flight.spine_ttl_seconds + 1
        client.upload_spine(make_spine(5))
        assert server.spine_sweeper.run_now(timeout=30)
        spines = Path(repo.offline_root) / "_spines"
        assert not (spines / f"{other.spine_id}.arrow").exists()
        assert len(list(spines.glob("*.arrow"))) == 1


def test_a_ticket_goes_stale_when_the_history_changes(repo: QuiverConfig, client: TrainingClient) -> None:
    info = client.plan(make_spine(20), feature_service="model")
    extra = pa.table({"merchant_id": ["m1"], "event_timestamp": pa.array([T0], US),
                      "risk": [0.5], "volume": [1]})
    pq.write_table(extra, Path(repo.offline_root) / "merchant_stats" / "late.parquet")
    with pytest.raises(FailedPreconditionError, match="merchant_stats") as error:
        client.fetch(info)
    assert error.value.reason == "STALE_TICKET"


def test_offline_spine_paths_must_stay_inside_the_store(repo: QuiverConfig, client: TrainingClient) -> None:
    for path in ("../outside.parquet", "/etc/passwd", "s3://bucket/x.parquet"):
        with pytest.raises(InvalidArgumentError, match="inside the spine directory"):
            client.get_training_set(OfflineSpine(path), feature_service="model")
    client.upload_spine(make_spine(3))  # creates _spines/
    with pytest.raises(InvalidArgumentError, match="inside the spine directory"):
        client.get_training_set(OfflineSpine("../_spines/.ticket-key"), feature_service="model")
    (Path(repo.offline_root) / "spines").mkdir()
    (Path(repo.offline_root) / "spines" / "notes.txt").write_text("not parquet")
    with pytest.raises(InvalidArgumentError, match="not a Parquet file"):
        client.get_training_set(OfflineSpine("notes.txt"), feature_service="model")
    with pytest.raises(NotFoundError):
        client.get_training_set(OfflineSpine("missing.parquet"), feature_service="model")
