"""Bounded fuzzing of a real serving server: bad input is always the client's error.

Random and malformed GetOnlineFeatures, PushFeatures (random Arrow IPC bytes,
random push targets, random timestamps), DeleteEntities and RegistryService
requests, and random bytes to every method, go to one real server over loopback.
Every answer must be OK or a client-error status, never INTERNAL, UNKNOWN or
UNAVAILABLE (the store is healthy throughout); every status must fit well inside
the client's 8 KiB trailer limit; and a write the server refused must leave the
online and offline stores exactly as they were. Each test runs a bounded number
of examples (a few seconds).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver.registry.v1 import registry_service_pb2 as reg_pb
from quiver.registry.v1 import registry_service_pb2_grpc as reg_grpc
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc
from quiver.types.v1 import value_pb2
from quiver_server.config import load_config
from quiver_server.demo_repo import write_demo_repo
from quiver_server.materialize import materialize_incremental
from quiver_server.repo import apply
from quiver_server.serving.server import create_server

SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
STATUS_BUDGET = 6 * 1024
EXAMPLES = settings(
    max_examples=120, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VIEWS = ["merchant_stats", "user_profile", "user_transaction_stats"]
KEYS = ["user_id", "merchant_id"]
MERCHANT_COLUMNS = {
    "merchant_id": pa.int64(), "event_timestamp": pa.timestamp("us", tz="UTC"),
    "merchant_category": pa.string(), "chargeback_rate_30d": pa.float64(),
    "merchant_txn_count_24h": pa.int64(), "avg_ticket_30d": pa.float64(), "is_high_risk": pa.bool_(),
}


class Server:
    def __init__(self, target: str, repo: Path) -> None:
        self.target = target
        self.repo = repo
        self.channel = grpc.insecure_channel(target)
        self.serving = pb_grpc.FeatureServingServiceStub(self.channel)
        self.registry = reg_grpc.RegistryServiceStub(self.channel)

    def latest_event_us(self) -> int:
        """The latest event time stored online for merchant_stats, in microseconds."""
        conn = sqlite3.connect(self.repo / "data" / "online.db")
        try:
            [(latest,)] = conn.execute('SELECT max("__event_ts") FROM "fv:fraud_detection:merchant_stats"')
        finally:
            conn.close()
        return int(latest or 0)

    def fingerprint(self) -> str:
        """Everything stored online (every table, every row) and offline (every file)."""
        digest = hashlib.sha256()
        conn = sqlite3.connect(self.repo / "data" / "online.db")
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY 1")]
            for table in tables:
                digest.update(table.encode())
                for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1'):
                    digest.update(repr(row).encode())
        finally:
            conn.close()
        for root, dirs, files in os.walk(self.repo / "data"):
            dirs.sort()
            for name in sorted(files):
                if name.startswith("online.db"):
                    continue
                path = Path(root) / name
                digest.update(f"{path}\t{path.stat().st_size}\t{path.stat().st_mtime_ns}".encode())
        return digest.hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = write_demo_repo(tmp_path_factory.mktemp("fuzz") / "repo", users=20, merchants=5, days=2)
    config = load_config(repo, env={
        "QUIVER_TELEMETRY__METRICS__ENABLED": "false",
        "QUIVER_TELEMETRY__LOGGING__ACCESS_LOG": "false",
    })
    apply(config)
    from datetime import UTC, datetime

    materialize_incremental(config, datetime.now(UTC))
    app, port = create_server(config, "127.0.0.1", 0)
    with app:
        fuzz = Server(f"127.0.0.1:{port}", repo)
        yield fuzz
        fuzz.channel.close()


def check_answer(call: Callable[[], Any]) -> grpc.StatusCode:
    """Make the call; a failure must be a client error with a small status."""
    try:
        call()
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        details = error.details() or ""  # type: ignore[attr-defined]
        assert code not in SERVER_FAULTS, f"{code.name}: {details}"
        assert code != grpc.StatusCode.RESOURCE_EXHAUSTED, f"status too large? {details}"
        size = len(quote(details)) + sum(
            len(k) + len(base64.b64encode(v) if isinstance(v, bytes) else v)
            for k, v in error.trailing_metadata() or ()  # type: ignore[attr-defined]
        )
        assert size < STATUS_BUDGET, f"a {size}-byte status for {code.name}"
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def rejected_write_changes_nothing(server: Server, call: Callable[[], Any]) -> None:
    before = server.fingerprint()
    if check_answer(call) != grpc.StatusCode.OK:
        assert server.fingerprint() == before, "a refused write changed what is stored"


# ---- strategies ---------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
long_text = st.builds(lambda c, n: c * n, st.characters(), st.integers(500, 4000))
names = st.one_of(st.sampled_from([*VIEWS, *KEYS, "fraud_model_v1", "user_risk", ""]), st.text(max_size=30), long_text)


@st.composite
def values(draw: st.DrawFn) -> value_pb2.Values:
    out = value_pb2.Values()
    kind = draw(st.sampled_from(["none", "int64", "int32", "double", "float", "bool", "string", "bytes", "timestamp"]))
    n = draw(st.integers(0, 6))
    if kind == "int64":
        out.int64_values.values.extend(draw(st.lists(INT64, min_size=n, max_size=n)))
    elif kind == "int32":
        out.int32_values.values.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n)))
    elif kind == "double":
        out.double_values.values.extend(draw(st.lists(st.floats(), min_size=n, max_size=n)))
    elif kind == "float":
        out.float_values.values.extend(draw(st.lists(st.floats(width=32), min_size=n, max_size=n)))
    elif kind == "bool":
        out.bool_values.values.extend(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    elif kind == "string":
        out.string_values.values.extend(draw(st.lists(st.text(max_size=20), min_size=n, max_size=n)))
    elif kind == "bytes":
        out.bytes_values.values.extend(draw(st.lists(st.binary(max_size=20), min_size=n, max_size=n)))
    elif kind == "timestamp":
        out.timestamp_values.values.extend(draw(st.lists(INT64, min_size=n, max_size=n)))
    return out


entity_maps = st.dictionaries(names, values(), max_size=4)
refs = st.lists(
    st.one_of(
        st.sampled_from(["merchant_stats:merchant_category", "user_profile:age", "user_profile:nope",
                         "nope:age", "user_profile", ":", "a:b:c"]),
        st.text(max_size=40), long_text,
    ),
    max_size=6,
)


@st.composite
def arrow_tables(draw: st.DrawFn) -> pa.Table:
    """Tables shaped more or less like merchant_stats rows, with random types and times."""
    n = draw(st.integers(0, 4))
    columns = draw(st.lists(st.sampled_from([*MERCHANT_COLUMNS, "surprise"]), unique=True, max_size=8))
    arrays = {}
    for name in columns:
        kind = draw(st.sampled_from(["declared", "int64", "string", "timestamp", "null"]))
        if kind == "declared" and name in MERCHANT_COLUMNS:
            typ = MERCHANT_COLUMNS[name]
            if pa.types.is_timestamp(typ):
                unit = draw(st.sampled_from(["s", "ms", "us", "ns"]))
                arrays[name] = pa.array(draw(st.lists(INT64, min_size=n, max_size=n)), pa.timestamp(unit, tz="UTC"))
            elif pa.types.is_integer(typ):
                arrays[name] = pa.array(draw(st.lists(INT64, min_size=n, max_size=n)), typ)
            elif pa.types.is_floating(typ):
                arrays[name] = pa.array(draw(st.lists(st.floats(), min_size=n, max_size=n)), typ)
            elif pa.types.is_boolean(typ):
                arrays[name] = pa.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), typ)
            else:
                arrays[name] = pa.array(draw(st.lists(st.text(max_size=10), min_size=n, max_size=n)), typ)
        elif kind == "int64":
            arrays[name] = pa.array(draw(st.lists(INT64, min_size=n, max_size=n)), pa.int64())
        elif kind == "timestamp":
            unit = draw(st.sampled_from(["s", "ms", "us", "ns"]))
            tz = draw(st.sampled_from([None, "UTC", "Europe/Paris"]))
            arrays[name] = pa.array(draw(st.lists(INT64, min_size=n, max_size=n)), pa.timestamp(unit, tz=tz))
        elif kind == "null":
            arrays[name] = pa.nulls(n)
        else:
            arrays[name] = pa.array(draw(st.lists(st.text(max_size=10), min_size=n, max_size=n)), pa.string())
    return pa.table(arrays) if arrays else pa.table({"x": pa.array([], pa.int64())})


def ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


@st.composite
def ipc_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["table", "random", "cut", "flipped"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    data = ipc(draw(arrow_tables()))
    if kind == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "flipped":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    return data


# ---- the fuzz tests -----------------------------------------------------------------------------


@EXAMPLES
@given(features=refs, service=st.one_of(st.none(), names), entities=entity_maps, full=st.booleans())
def test_get_online_features(
    server: Server, features: list[str], service: str | None, entities: dict[str, Any], full: bool
) -> None:
    request = pb.GetOnlineFeaturesRequest(entities=entities, full_feature_names=full)
    if service is not None:
        request.feature_service = service
    else:
        request.features.refs.extend(features)
    check_answer(lambda: server.serving.GetOnlineFeatures(request, timeout=10))


@EXAMPLES
@given(
    view=names, to=st.integers(-3, 8), payload=st.one_of(st.none(), ipc_payloads()),
    columns=st.dictionaries(st.sampled_from([*MERCHANT_COLUMNS, "surprise"]) | names, values(), max_size=8),
)
def test_push_features(
    server: Server, view: str, to: int, payload: bytes | None, columns: dict[str, Any]
) -> None:
    request = pb.PushFeaturesRequest(feature_view=view, to=to)  # type: ignore[arg-type]
    if payload is not None:
        request.arrow_ipc = payload
    else:
        for name, column in columns.items():
            request.columns[name].CopyFrom(column)
    rejected_write_changes_nothing(server, lambda: server.serving.PushFeatures(request, timeout=10))


@EXAMPLES
@given(
    table=arrow_tables(), to=st.sampled_from([1, 2, 3]),
    view=st.sampled_from(["merchant_stats"]),
)
def test_push_merchant_rows_with_random_types_and_times(
    server: Server, table: pa.Table, to: int, view: str
) -> None:
    request = pb.PushFeaturesRequest(feature_view=view, to=to, arrow_ipc=ipc(table))  # type: ignore[arg-type]
    rejected_write_changes_nothing(server, lambda: server.serving.PushFeatures(request, timeout=10))
    # Whatever was accepted, nothing online lies in the future (serving.max_future_seconds).
    assert server.latest_event_us() <= (time.time() + 300 + 60) * 1_000_000


@EXAMPLES
@given(entities=entity_maps, views=st.lists(names, max_size=3))
def test_delete_entities(server: Server, entities: dict[str, Any], views: list[str]) -> None:
    request = pb.DeleteEntitiesRequest(entities=entities, feature_views=views)
    rejected_write_changes_nothing(server, lambda: server.serving.DeleteEntities(request, timeout=10))


@EXAMPLES
@given(method=st.sampled_from(["ListProjects", "ListEntities", "GetEntity", "ListFeatureViews",
                               "GetFeatureView", "ListFeatureServices", "GetFeatureService"]),
       project=names, name=names)
def test_registry_service(server: Server, method: str, project: str, name: str) -> None:
    request_type = getattr(reg_pb, f"{method}Request")
    fields = request_type.DESCRIPTOR.fields_by_name
    request = request_type(**{k: v for k, v in (("project", project), ("name", name)) if k in fields})
    check_answer(lambda: getattr(server.registry, method)(request, timeout=10))


SERVICES = [pb.DESCRIPTOR.services_by_name["FeatureServingService"],
            reg_pb.DESCRIPTOR.services_by_name["RegistryService"]]
METHODS = [f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods]


@EXAMPLES
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=200))
def test_random_bytes_to_every_method(server: Server, method: str, data: bytes) -> None:
    call = server.channel.unary_unary(method)
    if "Push" in method or "Delete" in method:
        rejected_write_changes_nothing(server, lambda: call(data, timeout=10))
    else:
        check_answer(lambda: call(data, timeout=10))
