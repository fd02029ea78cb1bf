"""Arrow Flight calls made with plain grpcio, to see exactly what a server puts on the wire.

pyarrow's client folds the gRPC status into its own exceptions (and drops the rich status of
some calls); these helpers return the raw code, message and trailers of any Flight method, so
tests can check every byte a client of any language receives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from google.rpc import status_pb2

SERVICE = "/arrow.flight.protocol.FlightService/"
DETAILS_KEY = "grpc-status-details-bin"
SERVER_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                          grpc.StatusCode.UNAVAILABLE})


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_bytes(number: int, data: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(data)) + data


def descriptor(cmd: bytes = b"", *, path: Iterable[str] = (), kind: int | None = None) -> bytes:
    """A serialized arrow.flight.protocol.FlightDescriptor (CMD = 2, PATH = 1)."""
    path = list(path)
    kind = kind if kind is not None else (1 if path else 2)
    out = varint(1 << 3) + varint(kind) + field_bytes(2, cmd)
    return out + b"".join(field_bytes(3, p.encode()) for p in path)


def ticket(data: bytes) -> bytes:
    return field_bytes(1, data)


def criteria(expression: bytes) -> bytes:
    return field_bytes(1, expression)


def action(kind: str, body: bytes = b"") -> bytes:
    return field_bytes(1, kind.encode()) + field_bytes(2, body)


@dataclass
class Answer:
    """How one call ended."""

    code: grpc.StatusCode
    message: str
    trailers: list[tuple[str, str | bytes]] = field(default_factory=list)
    responses: list[bytes] = field(default_factory=list)

    @property
    def status(self) -> status_pb2.Status | None:
        """The google.rpc.Status trailer, if any."""
        for key, value in self.trailers:
            if key == DETAILS_KEY:
                assert isinstance(value, bytes)
                return status_pb2.Status.FromString(value)
        return None

    @property
    def wire_text(self) -> str:
        """Every text a client sees: the message and each trailer, decoded leniently."""
        parts = [self.message]
        for key, value in self.trailers:
            parts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
            parts.append(key)
        status = self.status
        if status is not None:
            parts.append(str(status))
        return "\n".join(parts)

    @property
    def metadata_bytes(self) -> int:
        """Bytes of the message and trailers, as a client's metadata limit counts them."""
        size = len(self.message.encode())
        for key, value in self.trailers:
            raw = value if isinstance(value, bytes) else value.encode()
            # Binary trailers travel base64-encoded; each entry costs 32 bytes more (HPACK).
            size += len(key) + 32 + (len(raw) * 4 + 2) // 3
        return size


def call(
    target: str, method: str, request: bytes = b"", *, stream_requests: list[bytes] | None = None,
    timeout: float = 30.0,
) -> Answer:
    """Call Flight method `method` ("GetSchema", "DoGet", ...) with raw request bytes."""
    with grpc.insecure_channel(target) as channel:
        name = SERVICE + method
        try:
            if method in ("GetFlightInfo", "GetSchema", "PollFlightInfo"):
                unary = channel.unary_unary(name, request_serializer=None, response_deserializer=None)
                response, result = unary.with_call(request, timeout=timeout)
                return Answer(result.code(), result.details() or "",
                              list(result.trailing_metadata() or ()), [response])
            if method in ("DoPut", "DoExchange", "Handshake"):
                bidi = channel.stream_stream(name, request_serializer=None, response_deserializer=None)
                stream = bidi(iter(stream_requests or [request]), timeout=timeout)
            else:
                streaming = channel.unary_stream(name, request_serializer=None,
                                                 response_deserializer=None)
                stream = streaming(request, timeout=timeout)
            responses = list(stream)
            return Answer(stream.code(), stream.details() or "",
                          list(stream.trailing_metadata() or ()), responses)
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            return Answer(error.code(), error.details() or "", list(error.trailing_metadata() or ()))


def leaks(text: str, server_paths: Iterable[str] = ()) -> list[str]:
    """What in `text` a client must never see: tracebacks, source files, server paths."""
    found = [marker for marker in ("Traceback", 'File "', ".py\"", ".py:", "site-packages")
             if marker in text]
    found.extend(path for path in server_paths if path and path in text)
    return found


def problems(answer: Answer, server_paths: Iterable[str] = ()) -> list[str]:
    """Why `answer` is not a clean answer to bad input (empty when it is)."""
    found = [f"leaks {leak!r}" for leak in leaks(answer.wire_text, server_paths)]
    if answer.code == grpc.StatusCode.OK:
        return found
    status = answer.status
    if status is None:
        found.append(f"{answer.code.name} without a google.rpc.Status trailer: {answer.message[:200]}")
    elif grpc.StatusCode.INTERNAL.value[0] == status.code or status.code in (2, 14):
        found.append(f"status {status.code} for bad input: {status.message[:200]}")
    if status is None and answer.code in SERVER_CODES:
        found.append(f"transport code {answer.code.name}")
    if answer.metadata_bytes >= 8192:
        found.append(f"status of {answer.metadata_bytes} bytes")
    return found
