"""Every Flight method answers a failure with the same rich status, and never with a traceback.

Checked on the wire with plain grpcio (flight_wire), so what pyarrow's own client hides is seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import grpc
import pytest
from flight_data import (
    make_spine,
)
from flight_wire import action, call, descriptor, field_bytes, leaks, problems
from google.rpc import error_details_pb2, status_pb2
from pyarrow import flight

from quiver import TrainingClient
from quiver.convert import pack
from quiver.errors import FailedPreconditionError, NotFoundError
from quiver.flight.v1 import flight_pb2 as pb
from quiver_server.config import QuiverConfig

Server = Callable[..., AbstractContextManager[str]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def repo(flight_repo: Callable[..., QuiverConfig]) -> QuiverConfig:
    return flight_repo()


@pytest.fixture
def location(repo: QuiverConfig, flight_server: Server) -> Iterator[str]:
    with flight_server(repo) as loc:
        yield loc


def target(location: str) -> str:
    return location.removeprefix("grpc://")


def reason(answer: Any) -> str:
    info = error_details_pb2.ErrorInfo()
    assert answer.status.details[0].Unpack(info)
    return info.reason


def server_paths(config: QuiverConfig) -> list[str]:
    return [str(config.repo_path), config.offline_root, str(config.registry_path)]


SCHEMA_CASES = {
    "garbage command": (descriptor(b"\x00\xffgarbage"), INVALID, "INVALID_COMMAND"),
    "path descriptor": (descriptor(path=["user_stats"]), INVALID, "INVALID_COMMAND"),
    "upload command": (descriptor(pack(pb.UploadSpineCommand())), INVALID, "WRONG_COMMAND"),
    "unknown service": (descriptor(pack(pb.TrainingSetCommand(feature_service="ghost"))),
                        grpc.StatusCode.NOT_FOUND, "FEATURE_SERVICE_NOT_FOUND"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_get_schema_answers_bad_commands_with_a_rich_status(
    repo: QuiverConfig, location: str, case: str
) -> None:
    request, code, why = SCHEMA_CASES[case]
    answer = call(target(location), "GetSchema", request)
    assert problems(answer, server_paths(repo)) == []
    assert answer.code == code
    assert answer.status is not None and answer.status.code == code.value[0]
    assert reason(answer) == why
    assert "Python exception" not in answer.status.message


def test_get_schema_without_a_registry_names_no_server_path(
    tmp_path: Path, make_config: Callable[..., QuiverConfig], flight_server: Server
) -> None:
    config = make_config(tmp_path)
    with flight_server(config) as location:
        answer = call(target(location), "GetSchema",
                      descriptor(pack(pb.TrainingSetCommand(feature_service="model"))))
        with TrainingClient(location) as client, pytest.raises(FailedPreconditionError) as error:
            client.get_training_set(make_spine(3), feature_service="model")
    assert problems(answer, server_paths(config)) == []
    assert answer.status is not None
    assert answer.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "quiver apply" in answer.status.message and "<registry>" in answer.status.message
    assert str(tmp_path) not in error.value.message and "quiver apply" in error.value.message


@pytest.mark.parametrize("method", ["DoAction", "DoExchange", "PollFlightInfo"])
def test_methods_quiver_does_not_offer_answer_unimplemented(
    repo: QuiverConfig, location: str, method: str
) -> None:
    requests = {
        "DoAction": action("drop_everything", b"\x00"),
        # A FlightData message whose descriptor names a command.
        "DoExchange": field_bytes(1, descriptor(b"x")),
        "PollFlightInfo": descriptor(b"x"),
    }
    answer = call(target(location), method, requests[method])
    assert answer.code == grpc.StatusCode.UNIMPLEMENTED
    if method == "PollFlightInfo":
        # pyarrow's server base answers it in C++ (plain "NYI"); Python never sees the call.
        assert leaks(answer.wire_text, server_paths(repo)) == []
        return
    assert problems(answer, server_paths(repo)) == []
    assert answer.status is not None and answer.status.code == answer.code.value[0]


def test_offered_actions_and_unimplemented_through_the_clients(location: str) -> None:
    raw = flight.connect(location)
    assert list(raw.list_actions()) == []
    with pytest.raises(flight.FlightError) as error:
        list(raw.do_action(flight.Action("drop_everything", b"")))
    raw.close()
    status = status_pb2.Status.FromString(error.value.extra_info)
    assert status.code == 12  # UNIMPLEMENTED
    assert "no actions" in status.message and "Traceback" not in str(error.value)


def test_training_client_get_schema_errors_are_typed(location: str) -> None:
    with TrainingClient(location) as client, pytest.raises(NotFoundError) as error:
        client.get_schema(feature_service="ghost")
    assert "ghost" in error.value.message and "Traceback" not in error.value.message
