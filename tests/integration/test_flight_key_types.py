"""Spine join keys of a type the view cannot hold are refused when the training set is planned,
naming the column, its type and the types allowed; the types it can hold are joined."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest
from flight_data import (
    expected,
    make_spine,
    running,
)
from flight_wire import call, descriptor, problems
from google.rpc import error_details_pb2

from quiver import TrainingClient
from quiver.convert import pack
from quiver.errors import InvalidArgumentError
from quiver.flight.v1 import flight_pb2 as pb
from quiver_server.config import QuiverConfig

Server = Callable[..., Any]


def with_column(spine: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return spine.set_column(spine.schema.get_field_index(name), name, values)


def user_ids(spine: pa.Table) -> list[int]:
    return [int(v) for v in spine["user_id"].to_pylist()]


REFUSED: dict[str, tuple[str, Callable[[pa.Table], pa.Array], str]] = {
    "uint64": ("user_id", lambda s: pa.array(user_ids(s), pa.uint64()), "uint64"),
    "uint64 past int64": ("user_id", lambda s: pa.array([2**63 + i for i in user_ids(s)], pa.uint64()),
                          "uint64"),
    "dictionary of uint64": ("user_id", lambda s: pa.array(user_ids(s), pa.uint64()).dictionary_encode(),
                             "uint64"),
    "float keys": ("user_id", lambda s: pa.array(user_ids(s), pa.float64()), "double"),
    "string for int": ("user_id", lambda s: pa.array([str(i) for i in user_ids(s)]), "string"),
    "bool": ("user_id", lambda s: pa.array([i % 2 == 0 for i in user_ids(s)]), "bool"),
    "decimal": ("user_id", lambda s: pa.array(user_ids(s), pa.decimal128(10, 0)), "decimal128"),
    "int for string": ("merchant_id", lambda s: pa.array(range(len(s)), pa.int64()), "int64"),
    "binary for string": ("merchant_id", lambda s: s["merchant_id"].cast(pa.binary()), "binary"),
    "list": ("user_id", lambda s: pa.array([[i] for i in user_ids(s)]), "list"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_key_types_the_view_cannot_hold_are_refused_when_planned(
    flight_repo: Callable[..., QuiverConfig], case: str
) -> None:
    column, values, type_name = REFUSED[case]
    spine = make_spine(30)
    spine = with_column(spine, column, values(spine))
    repo = flight_repo()
    with running(repo) as (_, location), TrainingClient(location) as client:
        handle = client.upload_spine(spine)
        with pytest.raises(InvalidArgumentError) as error:
            client.plan(handle, feature_service="model")
        # get_schema of the same command refuses it the same way.
        command = pb.TrainingSetCommand(feature_service="model")
        command.spine.spine_id = handle.spine_id
        answer = call(location.removeprefix("grpc://"), "GetSchema", descriptor(pack(command)))
    assert error.value.reason == "SPINE_KEY_TYPE"
    assert [v.field for v in error.value.violations] == [f"spine.{column}"]
    assert type_name in error.value.message and "allowed spine types" in error.value.message
    assert problems(answer, [repo.offline_root]) == []
    bad = error_details_pb2.BadRequest()
    assert answer.status is not None and answer.status.code == 3
    assert answer.status.details[1].Unpack(bad)
    assert bad.field_violations[0].field == f"spine.{column}"


ACCEPTED: dict[str, tuple[str, Callable[[pa.Table], pa.Array]]] = {
    "int8": ("user_id", lambda s: pa.array([i % 100 for i in user_ids(s)], pa.int8())),
    "uint32": ("user_id", lambda s: pa.array(user_ids(s), pa.uint32())),
    "dictionary of int16": ("user_id", lambda s: pa.array(user_ids(s), pa.int16()).dictionary_encode()),
    "large_string": ("merchant_id", lambda s: s["merchant_id"].cast(pa.large_string())),
    "string_view": ("merchant_id", lambda s: s["merchant_id"].cast(pa.string_view())),
    "dictionary of strings": ("merchant_id", lambda s: s["merchant_id"].dictionary_encode()),
    # Not a key, but a pandas category column arrives like this too.
    "dictionary label": ("label", lambda s: s["label"].cast(pa.string()).dictionary_encode()),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_key_types_the_view_can_hold_are_joined(
    flight_repo: Callable[..., QuiverConfig], case: str
) -> None:
    column, values = ACCEPTED[case]
    spine = make_spine(200, seed=11)
    changed = with_column(spine, column, values(spine))
    repo = flight_repo()
    with running(repo) as (_, location), TrainingClient(location) as client:
        got = client.get_training_set(changed, feature_service="model")
    want = expected(repo, with_column(spine, column, changed[column].cast(spine[column].type)))
    features = want.schema.names[len(spine.schema):]
    assert got.select(features).equals(want.select(features))
    # Spine columns come back with their values; dictionaries decoded.
    assert got[column].to_pylist() == changed[column].to_pylist()
