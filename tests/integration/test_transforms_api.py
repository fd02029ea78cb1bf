"""On-demand views and transforms over real gRPC and Flight servers: answers and errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from transform_repo import DEFINITIONS, FUNCTIONS, spine, write_history, write_repo

from quiver import OnlineClient, TrainingClient
from quiver.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from quiver.registry.v1 import registry_service_pb2 as rpb
from quiver.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from quiver_flight.server import create_flight_server
from quiver_server.config import QuiverConfig, load_config
from quiver_server.materialize import materialize_range
from quiver_server.repo import apply
from quiver_server.serving.server import ServingServer, create_server

MISBEHAVING_DEFINITIONS = DEFINITIONS + '''
misbehaving = OnDemandFeatureView(
    name="misbehaving", sources=[txn], schema=[Field("out", Float64)],
    function="fns:misbehave",
)
'''
MISBEHAVING_FUNCTIONS = FUNCTIONS + '''

def misbehave(inputs):
    amount = inputs["amount"].to_pylist()
    if 1.0 in amount:
        raise ValueError("bad amount, see /srv/secret/config.yaml")
    if 2.0 in amount:
        return {"out": pa.array([1.0] * (len(amount) + 1))}
    if 3.0 in amount:
        return {"out": pa.array(["text"] * len(amount))}
    if 4.0 in amount:
        return [1.0]
    return {"out": inputs["amount"]}
'''
NOW = datetime.now(UTC).replace(microsecond=0)
USERS = [1, 2, 3]


@dataclass
class Env:
    config: QuiverConfig
    serving: ServingServer
    target: str
    location: str


def _history() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    event = NOW - timedelta(hours=1)
    nums = [
        {"user_id": u, "event_timestamp": event, "created": event, "x_float": float(u) * 2,
         "x_int": u * 10, "x_f32": float(u), "cat": "abc"[u - 1], "code": u, "flag": u % 2 == 0}
        for u in USERS
    ]
    ages = [{"user_id": u, "event_timestamp": event, "y": float(u)} for u in USERS]
    return nums, ages


def _start(repo: Path) -> Iterator[Env]:
    write_history(repo, *_history())
    config = load_config(repo, env={})
    apply(config)
    end = datetime.now(UTC) + timedelta(seconds=1)
    materialize_range(config, end - timedelta(days=30), end, progress=False)
    flight_server, flight_port = create_flight_server(config)
    serving, port = create_server(config, "127.0.0.1", 0)
    try:
        yield Env(config, serving, f"127.0.0.1:{port}", f"grpc://127.0.0.1:{flight_port}")
    finally:
        serving.stop(0)
        flight_server.shutdown()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Servers over a repo with every transform, fitted once on users 1 and 2."""
    repo = write_repo(tmp_path_factory.mktemp("transforms") / "repo",
                      definitions=MISBEHAVING_DEFINITIONS, functions=MISBEHAVING_FUNCTIONS)
    for started in _start(repo):
        with TrainingClient(started.location) as client:
            client.get_training_set(spine([1, 2], [5.0, 6.0], NOW), feature_service="everything",
                                    fit=True)
        started.serving.registry.refresh()
        yield started


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Env]:
    """Servers over a repo of its own (nothing fitted), for tests that change it."""
    yield from _start(write_repo(tmp_path / "repo"))


def lookup(env: Env, **kwargs: object) -> object:
    with OnlineClient(env.target) as client:
        return client.get_online_features(entities={"user_id": USERS}, **kwargs)  # type: ignore[arg-type]


def test_on_demand_features_by_reference(env: Env) -> None:
    answer = lookup(env, features=["arrow_odfv:ratio", "nums:x_float", "arrow_odfv:big"],
                    request_data={"amount": [1.0, 400.0, 9.0]})
    assert answer.to_dict() == {  # type: ignore[attr-defined]
        "user_id": USERS, "ratio": [0.5, 100.0, 1.5], "x_float": [2.0, 4.0, 6.0],
        "big": [False, True, False],
    }
    assert answer.statuses("ratio") == ["PRESENT"] * 3  # type: ignore[attr-defined]
    assert answer.transform_version == 0  # type: ignore[attr-defined]


def test_service_mixes_stored_on_demand_and_transformed(env: Env) -> None:
    answer = lookup(env, feature_service="everything", request_data={"amount": [1.0, 2.0, 3.0]})
    data = answer.to_dict()  # type: ignore[attr-defined]
    assert answer.transform_version == 1  # type: ignore[attr-defined]
    # Fitted on users 1 and 2: x_float 2.0 and 4.0, mean 3, std 1.
    assert data["x_float"] == [-1.0, 1.0, 3.0]
    assert data["cat"] == [0, 1, -1]  # label_encoder: "c" was never seen
    assert data["code__1"] == [True, False, False] and data["code__2"] == [False, True, False]
    assert "code__3" not in data  # one_hot: no column for an unseen category
    assert data["flag"] == [False, True, False]  # untransformed
    assert data["x_f32"] == [2, 2, 3]  # bucketize [-1, 0, 2.5]: boundaries <= x


def test_on_demand_features_of_request_data_only(env: Env) -> None:
    with OnlineClient(env.target) as client:
        answer = client.get_online_features(
            entities={}, features=["misbehaving:out"], request_data={"amount": [0.5, 7.0]}
        )
        assert answer.values("out") == [0.5, 7.0]
        with pytest.raises(InvalidArgumentError, match="send no entities"):
            client.get_online_features(entities={"user_id": [1]}, features=["misbehaving:out"],
                                       request_data={"amount": [0.5]})
    with TrainingClient(env.location) as training:
        table = training.get_training_set(spine([1, 2], [0.5, 7.0], NOW),
                                          features=["misbehaving:out"])
    assert table["out"].to_pylist() == [0.5, 7.0]


def test_request_data_mistakes_are_invalid_argument(env: Env) -> None:
    cases = {
        "request_data.amount": {},
        "request_data.other": {"amount": [1.0, 2.0, 3.0], "other": [1, 2, 3]},
    }
    for field, data in cases.items():
        with pytest.raises(InvalidArgumentError) as caught:
            lookup(env, features=["arrow_odfv:ratio"], request_data=data)
        assert field in {v.field for v in caught.value.violations}, caught.value
    with pytest.raises(InvalidArgumentError, match="request_data.amount: field is float64"):
        lookup(env, features=["arrow_odfv:ratio"], request_data={"amount": ["a", "b", "c"]})
    with pytest.raises(InvalidArgumentError, match="one per entity"):
        lookup(env, features=["arrow_odfv:ratio"], request_data={"amount": [1.0]})
    with pytest.raises(InvalidArgumentError, match="no requested on-demand feature view"):
        lookup(env, features=["nums:x_float"], request_data={"amount": [1.0, 2.0, 3.0]})


@pytest.mark.parametrize(("amount", "problem"), [
    (1.0, "raised ValueError: bad amount, see <path>"),
    (2.0, "returned 4 values for 'out', expected 3"),
    (3.0, "returned string for 'out', declared float64"),
    (4.0, "returned list; return a pyarrow Table"),
])
def test_misbehaving_function_is_invalid_argument_naming_the_view(
    env: Env, amount: float, problem: str
) -> None:
    with OnlineClient(env.target) as client, pytest.raises(InvalidArgumentError) as caught:
        client.get_online_features(entities={}, features=["misbehaving:out"],
                                   request_data={"amount": [amount, 0.0, 0.0]})
    error = caught.value
    assert error.grpc_status == grpc.StatusCode.INVALID_ARGUMENT
    assert "on-demand feature view 'misbehaving'" in error.message and problem in error.message
    assert error.metadata == {"on_demand_feature_view": "misbehaving"}
    assert "/srv/secret" not in error.message and "Traceback" not in error.message
    # The same function, the same error, from the Flight server's do_get.
    with TrainingClient(env.location) as client, pytest.raises(InvalidArgumentError) as flight:
        client.get_training_set(spine(USERS, [amount, 0.0, 0.0], NOW), features=["misbehaving:out"])
    assert "on-demand feature view 'misbehaving'" in flight.value.message
    assert problem in flight.value.message


def test_transform_versions_are_pinned_and_checked(env: Env) -> None:
    amounts = {"amount": [1.0, 2.0, 3.0]}
    pinned = lookup(env, feature_service="everything", request_data=amounts, transform_version=1)
    assert pinned.transform_version == 1  # type: ignore[attr-defined]
    with pytest.raises(NotFoundError, match="no transform parameter version 99"):
        lookup(env, feature_service="everything", request_data=amounts, transform_version=99)
    with pytest.raises(InvalidArgumentError, match="only a feature service has transforms"):
        lookup(env, features=["nums:x_float"], transform_version=1)


def test_training_set_applies_the_version_it_names(env: Env) -> None:
    with TrainingClient(env.location) as client:
        table = client.get_training_set(spine(USERS, [1.0, 2.0, 3.0], NOW),
                                        feature_service="everything")
        schema = client.get_schema(feature_service="everything")
    assert table.schema.metadata[b"quiver.transform_version"] == b"1"
    assert table["x_float"].to_pylist() == [-1.0, 1.0, 3.0]
    assert table.schema.field("x_float").metadata[b"quiver.transform"] == b"standard_scaler"
    assert schema.names[:3] == ["user_id", "event_timestamp", "amount"]
    assert "code__1" in schema.names


def test_list_flights_describes_the_transformed_service(env: Env) -> None:
    with TrainingClient(env.location) as client:
        [(info, schema)] = client.list_feature_sets("every")
    assert info.name == "everything" and "arrow_odfv:ratio" in info.feature_refs
    assert schema.field("amount").metadata[b"quiver.role"] == b"request"
    assert "nums__code__1" in schema.names  # full names, one-hot columns of version 1


def test_spine_without_request_column_is_invalid_argument(env: Env) -> None:
    bare = spine(USERS, [1.0, 2.0, 3.0], NOW).drop_columns(["amount"])
    with TrainingClient(env.location) as client, pytest.raises(InvalidArgumentError) as caught:
        client.get_training_set(bare, feature_service="everything")
    assert caught.value.violations[0].field == "spine.amount"


def test_fit_needs_a_service_with_fitted_transforms(env: Env) -> None:
    rows = spine(USERS, [1.0, 2.0, 3.0], NOW)
    with TrainingClient(env.location) as client:
        with pytest.raises(InvalidArgumentError, match="needs a feature service"):
            client.get_training_set(rows, features=["nums:x_float"], fit=True)
        with pytest.raises(InvalidArgumentError, match="no transforms with fitted parameters"):
            client.get_training_set(rows, feature_service="plain", fit=True)


def test_registry_service_describes_transforms(env: Env) -> None:
    with grpc.insecure_channel(env.target) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        views = stub.ListOnDemandFeatureViews(rpb.ListOnDemandFeatureViewsRequest())
        assert [v.name for v in views.on_demand_feature_views] == [
            "arrow_odfv", "misbehaving", "pandas_odfv"
        ]
        view = stub.GetOnDemandFeatureView(rpb.GetOnDemandFeatureViewRequest(name="arrow_odfv"))
        assert view.on_demand_feature_view.function == "fns:arrow_features"
        assert view.on_demand_feature_view.function_hash.startswith("sha256:")
        service = stub.GetFeatureService(rpb.GetFeatureServiceRequest(name="everything"))
        assert service.current_transform_version == 1
        assert len(service.feature_service.transforms) == 10
        sets = stub.ListTransformParameterSets(
            rpb.ListTransformParameterSetsRequest(feature_service="everything")
        )
        assert [s.version for s in sets.parameter_sets] == [1] and sets.current_version == 1
        current = stub.GetTransformParameterSet(
            rpb.GetTransformParameterSetRequest(feature_service="everything")
        )
        assert current.current and current.parameter_set.fitted_via == "flight"
        assert current.parameter_set.training_set.rows == 2
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetTransformParameterSet(
                rpb.GetTransformParameterSetRequest(feature_service="everything", version=7)
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_unfitted_then_refitted_then_redefined(fresh: Env) -> None:
    rows = spine(USERS, [1.0, 2.0, 3.0], NOW)
    amounts = {"amount": [1.0, 2.0, 3.0]}
    with pytest.raises(FailedPreconditionError, match="never fitted"):
        lookup(fresh, feature_service="everything", request_data=amounts)
    with TrainingClient(fresh.location) as client:
        with pytest.raises(FailedPreconditionError, match="never fitted"):
            client.get_training_set(rows, feature_service="everything")
        first = client.get_training_set(rows, feature_service="everything", fit=True)
        second = client.get_training_set(rows.slice(0, 2), feature_service="everything", fit=True)
        again = client.get_training_set(rows, feature_service="everything", transform_version=1)
    assert second.schema.metadata[b"quiver.transform_version"] == b"2"
    assert again["x_float"].to_pylist() == first["x_float"].to_pylist()
    fresh.serving.registry.refresh()
    assert lookup(fresh, feature_service="everything", request_data=amounts).transform_version == 2  # type: ignore[attr-defined]
    # A changed transform definition: no fitted version applies any more.
    features = fresh.config.repo_path / "features.py"
    features.write_text(features.read_text().replace(
        'T.standard_scaler("nums:x_float")', 'T.min_max_scaler("nums:x_float")'
    ))
    plan, _ = apply(fresh.config)
    assert "fitted parameters (version 2) no longer apply" in plan.render()
    fresh.serving.registry.refresh()
    with pytest.raises(FailedPreconditionError, match="never fitted"):
        lookup(fresh, feature_service="everything", request_data=amounts)
    with pytest.raises(FailedPreconditionError, match="earlier definition"):
        lookup(fresh, feature_service="everything", request_data=amounts, transform_version=2)


def test_deployed_code_must_match_the_applied_code(fresh: Env) -> None:
    functions = fresh.config.repo_path / "fns.py"
    functions.write_text(functions.read_text().replace(
        '"big": pc.greater(amount, pa.scalar(100.0)),', '"big": pc.greater(amount, pa.scalar(1.0)),'
    ))
    with pytest.raises(FailedPreconditionError) as caught:
        lookup(fresh, features=["arrow_odfv:big"], request_data={"amount": [1.0, 2.0, 3.0]})
    assert caught.value.reason == "FUNCTION_CHANGED"
    plan, _ = apply(fresh.config)  # applying the new code makes it the code that runs
    assert "function fns:arrow_features source" in plan.render()
    fresh.serving.registry.refresh()
    answer = lookup(fresh, features=["arrow_odfv:big"], request_data={"amount": [1.0, 2.0, 3.0]})
    assert answer.values("big") == [False, True, True]  # type: ignore[attr-defined]
