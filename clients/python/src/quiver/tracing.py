"""OpenTelemetry names Quiver's clients and servers give their spans.

Spans follow the RPC semantic conventions: named ``<package>.<Service>/<Method>``
with ``rpc.system.name``/``rpc.method`` and the older ``rpc.system``/``rpc.service``
many backends still key on. Flight calls are named after the Flight gRPC service,
``arrow.flight.protocol.FlightService/<Method>``.

This module only names things, so it needs no OpenTelemetry; the client's
tracing (``OnlineClient(tracing=True)``, ``TrainingClient(tracing=True)``) and
the servers' interceptors use it.
"""

from __future__ import annotations

from typing import Any

from pyarrow import flight

__all__ = [
    "FLIGHT_SERVICE",
    "flight_method",
    "peer_attributes",
    "rpc_attributes",
    "split_target",
]

FLIGHT_SERVICE = "arrow.flight.protocol.FlightService"
_FLIGHT_METHODS = {
    flight.FlightMethod.HANDSHAKE: "Handshake",
    flight.FlightMethod.LIST_FLIGHTS: "ListFlights",
    flight.FlightMethod.GET_FLIGHT_INFO: "GetFlightInfo",
    flight.FlightMethod.GET_SCHEMA: "GetSchema",
    flight.FlightMethod.DO_GET: "DoGet",
    flight.FlightMethod.DO_PUT: "DoPut",
    flight.FlightMethod.DO_ACTION: "DoAction",
    flight.FlightMethod.LIST_ACTIONS: "ListActions",
    flight.FlightMethod.DO_EXCHANGE: "DoExchange",
}


def flight_method(method: flight.FlightMethod) -> str:
    """The gRPC method name of a Flight call (``DoGet``, ``GetFlightInfo``, ...)."""
    return _FLIGHT_METHODS.get(method, str(method))


def rpc_attributes(service: str, method: str) -> dict[str, Any]:
    """The RPC attributes of a call's span, client or server side."""
    return {
        "rpc.system.name": "grpc", "rpc.method": f"{service}/{method}",
        "rpc.system": "grpc", "rpc.service": service,
    }


def split_target(target: str) -> tuple[str, int | None]:
    """``host:port`` (or ``[v6]:port``, ``dns:///host:port``) -> (host, port)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return target, None
    address = target.rsplit("/", 1)[-1]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, None
    return host.strip("[]"), int(port)


def peer_attributes(target: str) -> dict[str, Any]:
    """``server.address`` / ``server.port`` of a ``host:port`` (or URI) target."""
    if not target:
        return {}
    host, port = split_target(target.split("://")[-1])
    return {"server.address": host} if port is None else {"server.address": host, "server.port": port}
