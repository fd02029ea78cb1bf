"""Rich statuses: the generated copies in protos/quiver/rpc/v1 are wire compatible with google.rpc."""

from __future__ import annotations

from typing import Any

import grpc

from quiver.errors import FieldViolation, InvalidArgumentError, NotFoundError
from quiver.status import decode_status, encode_status, error_from_status


def test_round_trip_of_bad_request_and_error_info() -> None:
    sent = InvalidArgumentError(
        "entities.user_id: missing join key column",
        violations=[FieldViolation("entities.user_id", "missing join key column")],
        reason="INVALID_ENTITIES",
        metadata={"feature_view": "user_profile"},
    )
    raw = encode_status(sent)
    status = decode_status(raw)
    assert status is not None
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.message == sent.message
    assert status.reason == "INVALID_ENTITIES"
    assert status.metadata == {"feature_view": "user_profile"}
    assert status.violations == sent.violations


def test_flight_takes_the_code_from_the_status() -> None:
    raw = encode_status(NotFoundError("spine 'x' does not exist", reason="SPINE_NOT_FOUND"))
    error = error_from_status(grpc.StatusCode.UNKNOWN, "opaque", raw, code_from_details=True)
    assert isinstance(error, NotFoundError)
    assert (error.message, error.reason, error.details) == ("spine 'x' does not exist", "SPINE_NOT_FOUND", raw)


def test_garbage_details_fall_back_to_the_transport_status() -> None:
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, "down", b"\xff\xff\xff")
    assert error.grpc_code == grpc.StatusCode.UNAVAILABLE
    assert error.message == "down" and error.reason == "UNAVAILABLE"


def test_encoded_status_is_a_standard_google_rpc_status() -> None:
    # Standard tools decode the bytes with googleapis' own classes and type URLs.
    from google.rpc import error_details_pb2, status_pb2

    sent = InvalidArgumentError(
        "features[0]: bad", violations=[FieldViolation("features[0]", "bad")],
        reason="INVALID_REF", metadata={"feature_view": "v"},
    )
    status = status_pb2.Status.FromString(encode_status(sent))
    assert (status.code, status.message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], sent.message)
    assert [d.type_url for d in status.details] == [
        "type.googleapis.com/google.rpc.ErrorInfo", "type.googleapis.com/google.rpc.BadRequest",
    ]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("INVALID_REF", "quiver.dev", {"feature_view": "v"})
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("features[0]", "bad")]


def test_a_status_made_by_standard_tools_decodes() -> None:
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2

    info, bad = any_pb2.Any(), any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="TOO_MANY", domain="x", metadata={"k": "v"}))
    bad.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="a", description="b", reason="R"),
    ]))
    raw = status_pb2.Status(code=3, message="m", details=[info, bad]).SerializeToString()
    status = decode_status(raw)
    assert status is not None
    assert (status.code, status.message, status.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "m", "TOO_MANY")
    assert status.metadata == {"k": "v"}
    assert status.violations == [FieldViolation("a", "b")]


def test_unknown_details_and_an_ok_code_are_ignored() -> None:
    from google.protobuf import any_pb2

    from quiver.rpc.v1 import status_pb2

    other = any_pb2.Any(type_url="type.googleapis.com/google.rpc.RetryInfo", value=b"\x0a\x02\x08\x01")
    raw = status_pb2.Status(code=14, message="down", details=[other]).SerializeToString()
    status = decode_status(raw)
    assert status is not None and status.code == grpc.StatusCode.UNAVAILABLE and status.reason is None
    assert decode_status(status_pb2.Status(code=0).SerializeToString()) is None


def test_the_copies_have_google_rpc_s_field_numbers_and_types() -> None:
    from google.rpc import error_details_pb2, status_pb2

    from quiver.rpc.v1 import status_pb2 as copies

    def fields(descriptor: Any) -> dict[int, tuple[str, int, bool]]:
        return {f.number: (f.name, f.type, f.is_repeated) for f in descriptor.fields}

    pairs = [
        (copies.Status, status_pb2.Status),
        (copies.ErrorInfo, error_details_pb2.ErrorInfo),
        (copies.BadRequest, error_details_pb2.BadRequest),
    ]
    for copy, original in pairs:
        assert fields(copy.DESCRIPTOR) == fields(original.DESCRIPTOR), copy.DESCRIPTOR.name
    copied = fields(copies.BadRequest.FieldViolation.DESCRIPTOR)
    original = fields(error_details_pb2.BadRequest.FieldViolation.DESCRIPTOR)
    assert copied == {n: f for n, f in original.items() if n in copied} and set(copied) == {1, 2, 3}
    # The copy imports nothing but the well-known Any: protos/ alone is enough to generate it.
    assert [d.name for d in copies.DESCRIPTOR.dependencies] == ["google/protobuf/any.proto"]
