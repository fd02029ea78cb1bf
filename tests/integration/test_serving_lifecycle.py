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


def health_until(target: str, done: Callable[[int | None], bool], timeout: float = 30) -> bool:
    """Poll the health service until `done(status)` (None: the call was refused) holds."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status: int | None = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                status = None
            if done(status):
                return True
            time.sleep(0.05)
    return False


def wait_serving(target: str, timeout: float = 30) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    if not health_until(target, lambda status: status == serving, timeout):
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
    """Stopping reports NOT_SERVING (or refuses new calls) at once, and waits for the call
    in flight, which is held in the store until the test has seen the drain begin."""
    store = SqliteOnlineStore(materialized.resolve(materialized.online_store.path))  # type: ignore[union-attr]
    original = store.read
    entered, release = threading.Event(), threading.Event()

    def held(reads: Any) -> Any:
        entered.set()
        assert release.wait(60), "the test never released the call"
        return original(reads)

    store.read = held  # type: ignore[method-assign]
    app, port = create_server(materialized, "127.0.0.1", 0, store=store)
    target = f"127.0.0.1:{port}"
    results: list[object] = []

    def call() -> None:
        with OnlineClient(target) as client:
            results.append(client.get_online_features(
                features=["user_profile:age"], entities={"user_id": [1]}, timeout=60))

    worker = threading.Thread(target=call)
    worker.start()
    try:
        assert entered.wait(30)
        stopper = threading.Thread(target=app.stop, args=(60.0,))
        stopper.start()
        assert _draining(target), "the server never reported NOT_SERVING nor refused calls"
        assert stopper.is_alive()  # still waiting for the call in flight
    finally:
        release.set()
    worker.join(60)
    stopper.join(60)
    assert not stopper.is_alive()
    assert len(results) == 1  # the in-flight call completed


def _draining(target: str) -> bool:
    """Whether health turns NOT_SERVING, or new calls are refused, in time."""
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    return health_until(target, lambda status: status in (None, not_serving))


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
