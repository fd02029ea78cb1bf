"""Conversion between Flight messages and the server: commands, tickets, errors.

Descriptor commands and tickets are `quiver.flight.v1` messages packed in a
`google.protobuf.Any` (as Flight SQL does), so the type travels with the bytes
and a new message never has to guess. Errors leave as the matching
`pyarrow.flight` error class with a serialized `google.rpc.Status` in
extra_info (the grpc-status-details-bin trailer).
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import any_pb2, message
from pyarrow import flight

from quiver.errors import InvalidArgumentError, QuiverError
from quiver.flight.v1 import flight_pb2 as pb
from quiver_server.echo import clip
from quiver_server.error_policy import to_status

TypeUrl = str

COMMAND_TYPES: dict[TypeUrl, type[message.Message]] = {
    f"type.googleapis.com/{m.DESCRIPTOR.full_name}": m
    for m in (pb.UploadSpineCommand, pb.TrainingSetCommand, pb.CreateTrainingDatasetCommand,
              pb.TrainingDatasetCommand)
}
_TICKET_URL = f"type.googleapis.com/{pb.TrainingSetTicket.DESCRIPTOR.full_name}"

# Flight can carry only these gRPC codes; every other error travels as
# FlightServerError (transport code UNKNOWN) and the Status inside says which.
_FLIGHT_CLASSES: dict[grpc.StatusCode, type[flight.FlightError]] = {
    grpc.StatusCode.UNAVAILABLE: flight.FlightUnavailableError,
    grpc.StatusCode.INTERNAL: flight.FlightInternalError,
    grpc.StatusCode.DEADLINE_EXCEEDED: flight.FlightTimedOutError,
    grpc.StatusCode.CANCELLED: flight.FlightCancelledError,
    grpc.StatusCode.UNAUTHENTICATED: flight.FlightUnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: flight.FlightUnauthorizedError,
}


def unpack_command(data: bytes) -> message.Message:
    """The command a FlightDescriptor carries.

    Raises:
        InvalidArgumentError: not a packed Quiver command.
    """
    wrapper = _any(data, "descriptor.cmd", "a descriptor command")
    command_type = COMMAND_TYPES.get(wrapper.type_url)
    if command_type is None:
        allowed = ", ".join(t.DESCRIPTOR.full_name for t in COMMAND_TYPES.values())
        raise InvalidArgumentError.for_field(
            "descriptor.cmd", f"unknown command type {clip(wrapper.type_url)!r}; allowed: {allowed}",
            reason="UNKNOWN_COMMAND",
        )
    command = command_type()
    if not _unpack(wrapper, command):
        raise InvalidArgumentError.for_field(
            "descriptor.cmd", f"not a valid {command_type.DESCRIPTOR.full_name}: a malformed "
            f"message, or a string that is not UTF-8", reason="INVALID_COMMAND",
        )
    return command


def unpack_ticket(data: bytes) -> pb.TrainingSetTicket:
    """The TrainingSetTicket in a Flight ticket.

    Raises:
        InvalidArgumentError: not a Quiver ticket.
    """
    wrapper = _any(data, "ticket", "a training-set ticket")
    ticket = pb.TrainingSetTicket()
    if wrapper.type_url != _TICKET_URL or not _unpack(wrapper, ticket):
        raise InvalidArgumentError.for_field(
            "ticket", f"not a training-set ticket (type {clip(wrapper.type_url)!r}); use the tickets "
            f"get_flight_info returns", reason="INVALID_TICKET",
        )
    return ticket


def _unpack(wrapper: any_pb2.Any, target: message.Message) -> bool:
    try:
        return bool(wrapper.Unpack(target))
    except message.DecodeError:
        return False


def _any(data: bytes, field: str, what: str) -> any_pb2.Any:
    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(data)
    except message.DecodeError:
        wrapper.Clear()
    if not wrapper.type_url:
        raise InvalidArgumentError.for_field(
            field, f"not {what}: expected a google.protobuf.Any-packed quiver.flight.v1 message",
            reason="INVALID_TICKET" if field == "ticket" else "INVALID_COMMAND",
        )
    return wrapper


def timestamp_seconds(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def flight_error(error: QuiverError) -> Exception:
    """The Flight exception to raise for `error`, carrying its rich status."""
    status = to_status(error)  # bounded, so the message is too
    error_class = _FLIGHT_CLASSES.get(error.grpc_code, flight.FlightServerError)
    result: Exception = error_class(
        f"{error.grpc_code.name}: {status.message}", extra_info=status.SerializeToString()
    )
    return result
