"""Bounded fuzzing of the governance calls on real servers: training dataset commands
over Flight, the dataset, lineage and catalog RPCs, and offline erasure requests.

Every answer is OK or a rich status that is never INTERNAL, UNKNOWN or UNAVAILABLE and
shows no traceback or server path; a refused erasure leaves no pending request behind
(planners would honour it forever), stored dataset versions never change, and a
training set planned afterwards still reads every file. Examples are derandomized (a
few seconds per test); QUIVER_TEST_FUZZ_EXAMPLES=2000 searches longer and at random.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flight_wire import SERVICE, Answer, descriptor, problems
from governed import spine, write_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver import TrainingClient
from quiver.convert import pack
from quiver.flight.v1 import flight_pb2 as fpb
from quiver.registry.v1 import governance_pb2 as gpb
from quiver.registry.v1 import registry_service_pb2 as rpb
from quiver.serving.v1 import serving_service_pb2 as spb
from quiver.types.v1 import value_pb2
from quiver_server.config import QuiverConfig
from quiver_server.governance.paths import GovernancePaths
from quiver_server.serving.server import create_server

_EXAMPLES = int(os.environ.get("QUIVER_TEST_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXAMPLES or 40, deadline=None, derandomize=not _EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                database=None)

TEXT = st.one_of(
    st.sampled_from(["", "model", "stats", "profile", "user", "user_id", "kept", "kept:1", "stats:spend",
                     "../kept", "kept/..", ".", "_datasets", "x" * 113, "é", "a b", "risk"]),
    st.text(max_size=30),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "/", "é", "../"]), st.integers(100, 3000)),
).map(lambda t: t.encode("utf-8", "replace").decode())
INT64 = st.integers(-(2**63), 2**63 - 1)
KINDS = st.sampled_from(["", "entity", "feature_view", "feature", "feature_service",
                         "training_dataset", "table", "FEATURE_VIEW"])


@dataclass
class Servers:
    config: QuiverConfig
    flight: str  # host:port
    serving: str
    paths: list[str]

    def unary(self, method: str, request: bytes) -> Answer:
        target = self.flight if method.startswith(SERVICE) else self.serving
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            try:
                response, result = call.with_call(request, timeout=60)
                return Answer(result.code(), result.details() or "",
                              list(result.trailing_metadata() or ()), [response])
            except grpc.RpcError as error:
                assert isinstance(error, grpc.Call)
                return Answer(error.code(), error.details() or "", list(error.trailing_metadata() or ()))

    def check(self, method: str, request: bytes) -> Answer:
        answer = self.unary(method, request)
        assert problems(answer, self.paths) == [], (method, request[:200])
        return answer


def stored_datasets(config: QuiverConfig) -> dict[str, str]:
    root = GovernancePaths.of(config).datasets
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("v*.pb"))}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    from quiver_flight.server import create_flight_server

    config = write_repo(tmp_path_factory.mktemp("governed") / "repo")
    (Path(config.offline_root) / "spines").mkdir()
    pq.write_table(spine(30), Path(config.offline_root) / "spines" / "s.parquet")
    flight_server, flight_port = create_flight_server(config, "grpc://127.0.0.1:0")
    app, port = create_server(config, "127.0.0.1", 0)
    try:
        with app, TrainingClient(f"grpc://127.0.0.1:{flight_port}") as client:
            client.create_training_dataset("kept", spine(), feature_service="model", tags={"pii": "no"})
            yield Servers(config, f"127.0.0.1:{flight_port}", f"127.0.0.1:{port}",
                          [str(config.repo_path), config.offline_root, str(config.registry_path),
                           str(Path(__file__).resolve().parents[2])])
    finally:
        flight_server.shutdown()


@st.composite
def training_sets(draw: Callable[..., Any]) -> fpb.TrainingSetCommand:
    command = fpb.TrainingSetCommand(partition_rows=draw(st.integers(-5, 500)),
                                     full_feature_names=draw(st.booleans()))
    which = draw(st.sampled_from(["service", "features", "none"]))
    if which == "service":
        command.feature_service = draw(TEXT)
    elif which == "features":
        command.features.refs.extend(draw(st.lists(TEXT, max_size=3)))
    spine_kind = draw(st.sampled_from(["dataset", "offline", "id", "none"]))
    if spine_kind == "dataset":
        command.spine.training_dataset.CopyFrom(
            gpb.TrainingDatasetRef(name=draw(TEXT), version=draw(st.integers(-3, 3)))
        )
    elif spine_kind == "offline":
        command.spine.parquet_path = draw(st.one_of(st.just("s.parquet"), TEXT))
    elif spine_kind == "id":
        command.spine.spine_id = draw(TEXT)
    command.transform_version = draw(st.integers(-2, 3))
    return command


@FUZZ
@given(name=TEXT, version=st.one_of(st.integers(-3, 3), INT64), pull=st.booleans(),
       training_set=training_sets(), description=TEXT,
       tags=st.dictionaries(TEXT, TEXT, max_size=3))
def test_training_dataset_commands(
    servers: Servers, name: str, version: int, pull: bool, training_set: fpb.TrainingSetCommand,
    description: str, tags: dict[str, str],
) -> None:
    before = stored_datasets(servers.config)
    if pull:
        command = pack(fpb.TrainingDatasetCommand(name=name, version=version, partition_rows=version))
    else:
        command = pack(fpb.CreateTrainingDatasetCommand(
            name=name, training_set=training_set, description=description, tags=tags,
        ))
    answer = servers.check(SERVICE + "GetFlightInfo", descriptor(command))
    after = stored_datasets(servers.config)
    # Stored versions never change; a new one appears only for a create that succeeded.
    assert {k: v for k, v in after.items() if k in before} == before
    if pull or answer.code != grpc.StatusCode.OK:
        assert after == before


@FUZZ
@given(method=st.sampled_from(["ListTrainingDatasets", "GetTrainingDataset", "GetLineage",
                               "SearchCatalog", "GetCatalogEntry"]),
       project=st.one_of(st.just("governed"), TEXT), name=TEXT, kind=KINDS, text=TEXT,
       version=INT64, limit=st.integers(-(2**31), 2**31 - 1), kinds=st.lists(KINDS, max_size=3))
def test_governance_rpcs(
    servers: Servers, method: str, project: str, name: str, kind: str, text: str, version: int,
    limit: int, kinds: list[str],
) -> None:
    request: Any = {
        "ListTrainingDatasets": lambda: rpb.ListTrainingDatasetsRequest(project=project, name=name),
        "GetTrainingDataset": lambda: rpb.GetTrainingDatasetRequest(project=project, name=name,
                                                                     version=version),
        "GetLineage": lambda: rpb.GetLineageRequest(project=project, name=name, kind=kind),
        "SearchCatalog": lambda: rpb.SearchCatalogRequest(project=project, text=text, kinds=kinds,
                                                          limit=limit),
        "GetCatalogEntry": lambda: rpb.GetCatalogEntryRequest(project=project, kind=kind, name=name),
    }[method]()
    servers.check(f"/quiver.registry.v1.RegistryService/{method}", request.SerializeToString())


@st.composite
def values(draw: Callable[..., Any]) -> value_pb2.Values:
    out = value_pb2.Values()
    kind = draw(st.sampled_from(["none", "int64", "double", "string", "bytes", "bool", "timestamp"]))
    n = draw(st.integers(0, 3))
    if kind == "int64":
        # Mostly ids no row has: the history stays as it is for the other tests.
        out.int64_values.values.extend(draw(st.lists(st.sampled_from([1000, -1, 2**63 - 1]),
                                                     min_size=n, max_size=n)))
    elif kind == "double":
        out.double_values.values.extend(draw(st.lists(st.floats(), min_size=n, max_size=n)))
    elif kind == "string":
        out.string_values.values.extend(draw(st.lists(TEXT, min_size=n, max_size=n)))
    elif kind == "bytes":
        out.bytes_values.values.extend(draw(st.lists(st.binary(max_size=8), min_size=n, max_size=n)))
    elif kind == "bool":
        out.bool_values.values.extend(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    elif kind == "timestamp":
        out.timestamp_values.values.extend(draw(st.lists(INT64, min_size=n, max_size=n)))
    return out


@FUZZ
@given(entities=st.dictionaries(st.one_of(st.sampled_from(["user_id", "user", "spend"]), TEXT),
                                values(), max_size=3),
       views=st.lists(st.one_of(st.sampled_from(["stats", "profile", "model"]), TEXT), max_size=3))
def test_offline_erasure_requests(
    servers: Servers, entities: dict[str, value_pb2.Values], views: list[str],
) -> None:
    request = spb.DeleteEntitiesRequest(feature_views=views, offline=True)
    for key, value in entities.items():
        request.entities[key].CopyFrom(value)
    servers.check("/quiver.serving.v1.FeatureServingService/DeleteEntities", request.SerializeToString())
    # Completed or refused before it was recorded: nothing is left pending.
    assert not list(GovernancePaths.of(servers.config).erasures_pending.glob("*.json"))
    with TrainingClient(f"grpc://{servers.flight}") as client:
        table = client.get_training_set(spine(20), feature_service="model")
    assert table.num_rows == 20 and isinstance(table, pa.Table)


@pytest.mark.parametrize("method", ["ListTrainingDatasets", "GetTrainingDataset"])
def test_a_dataset_name_too_long_for_a_file_is_invalid_argument(servers: Servers, method: str) -> None:
    request = getattr(rpb, f"{method}Request")(project="governed", name="a" * 256)
    answer = servers.check(f"/quiver.registry.v1.RegistryService/{method}", request.SerializeToString())
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT
