"""Serving processes: several workers on one port, and draining on shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver import OnlineClient
from quiver_server.config import QuiverConfig
from quiver_server.online.sqlite import SqliteOnlineStore
from quiver_server.serving.server import create_server


def wait_serving(target: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise AssertionError(f"{target} never became SERVING")


@pytest.mark.slow
def test_workers_share_one_port_and_stop_on_sigterm(
    materialized: QuiverConfig, serve_workers: Callable[..., Any]
) -> None:
    # Both workers logged "serving": both are bound to the one port.
    server, target, _ = serve_workers(materialized)
    wait_serving(target)
    for _ in range(20):
        with OnlineClient(target) as client:
            result = client.get_online_features(features=["user_profile:age"],
                                                entities={"user_id": [1]})
            assert result.statuses("age") == ["PRESENT"]
    assert server.stop() == 0, server.output()
    assert "with 2 workers" in server.output()
    assert {e.get("worker") for e in server.logged("stopped")} == {0, 1}, server.output()


def test_sigterm_drains_in_flight_calls(materialized: QuiverConfig) -> None:
    store = SqliteOnlineStore(materialized.resolve(materialized.online_store.path))  # type: ignore[union-attr]
    original = store.read
    entered = threading.Event()

    def slow(reads: Any) -> Any:
        entered.set()
        time.sleep(0.5)
        return original(reads)

    store.read = slow  # type: ignore[method-assign]
    app, port = create_server(materialized, "127.0.0.1", 0, store=store)
    target = f"127.0.0.1:{port}"
    results: list[object] = []

    def call() -> None:
        with OnlineClient(target) as client:
            results.append(client.get_online_features(features=["user_profile:age"], entities={"user_id": [1]}))

    worker = threading.Thread(target=call)
    worker.start()
    assert entered.wait(5)
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stopper = threading.Thread(target=app.stop, args=(5.0,))
        stopper.start()
        time.sleep(0.1)
        # Draining: health reports NOT_SERVING, or new calls are already refused.
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        except grpc.RpcError:
            pass
    worker.join(10)
    stopper.join(10)
    assert len(results) == 1  # the in-flight call completed


def test_server_starts_before_the_first_apply(demo_config: QuiverConfig) -> None:
    from quiver.errors import UnavailableError
    from quiver_server.repo import apply

    app, port = create_server(demo_config, "127.0.0.1", 0)
    target = f"127.0.0.1:{port}"
    with app, grpc.insecure_channel(target) as channel, OnlineClient(target) as client:
        health = health_pb2_grpc.HealthStub(channel)
        overall = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        serving = health.Check(
            health_pb2.HealthCheckRequest(service="quiver.serving.v1.FeatureServingService"), timeout=5
        )
        # Alive (liveness) but not ready (readiness) until a registry exists.
        assert overall.status == health_pb2.HealthCheckResponse.SERVING
        assert serving.status == health_pb2.HealthCheckResponse.NOT_SERVING
        try:
            client.get_online_features(features=["user_profile:age"], entities={"user_id": [1]})
            raise AssertionError("expected UnavailableError")
        except UnavailableError as exc:
            assert exc.reason == "REGISTRY_EMPTY"
            assert "run `quiver apply`" in exc.message
        apply(demo_config)
        assert app.registry.refresh()
        result = client.get_online_features(features=["user_profile:age"], entities={"user_id": [1]})
        assert result.statuses("age") == ["NOT_FOUND"]  # applied, not yet materialized
