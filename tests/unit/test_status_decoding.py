"""The client reads the server's rich statuses without the google.rpc classes."""

from __future__ import annotations

import grpc

from quiver._status import decode_status, error_from_status
from quiver.errors import FieldViolation, InvalidArgumentError, NotFoundError
from quiver_server.serving.status import to_status


def test_round_trip_of_bad_request_and_error_info() -> None:
    sent = InvalidArgumentError(
        "entities.user_id: missing join key column",
        violations=[FieldViolation("entities.user_id", "missing join key column")],
        reason="INVALID_ENTITIES",
        metadata={"feature_view": "user_profile"},
    )
    raw = to_status(sent).SerializeToString()
    status = decode_status(raw)
    assert status is not None
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.message == sent.message
    assert status.reason == "INVALID_ENTITIES"
    assert status.metadata == {"feature_view": "user_profile"}
    assert status.violations == sent.violations


def test_flight_takes_the_code_from_the_status() -> None:
    raw = to_status(NotFoundError("spine 'x' does not exist", reason="SPINE_NOT_FOUND")).SerializeToString()
    error = error_from_status(grpc.StatusCode.UNKNOWN, "opaque", raw, code_from_details=True)
    assert isinstance(error, NotFoundError)
    assert (error.message, error.reason, error.details) == ("spine 'x' does not exist", "SPINE_NOT_FOUND", raw)


def test_garbage_details_fall_back_to_the_transport_status() -> None:
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, "down", b"\xff\xff\xff")
    assert error.grpc_code == grpc.StatusCode.UNAVAILABLE
    assert error.message == "down" and error.reason == "UNAVAILABLE"
