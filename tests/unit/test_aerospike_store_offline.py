"""The Aerospike store's pure parts: set names, value conversions, the write filter,
client configuration and error translation. No server needed (see
tests/contract for the store against a real one).
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import aerospike
import pytest
from aerospike import exception as aerospike_exception
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver import (
    Bool,
    Bytes,
    Entity,
    FeatureView,
    Field,
    Float32,
    Float64,
    Int32,
    Int64,
    ParquetSource,
    String,
    Timestamp,
    ValueType,
)
from quiver.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from quiver_server.config import AerospikeOnlineStoreConfig, AerospikeTlsConfig
from quiver_server.online.aerospike_expressions import (
    CREATED_BIN,
    EVENT_BIN,
    WriteFilter,
    compile_write_filter,
)
from quiver_server.online.aerospike_layout import (
    MAX_TTL_SECONDS,
    bin_name,
    decoder,
    read_layout,
    record_ttl,
    set_name,
    write_layout,
)
from quiver_server.online.aerospike_policy import (
    client_config,
    describe_code,
    describe_exception,
    error_for_code,
    parse_hosts,
    read_policy,
    redacted,
    write_policy,
)
from quiver_server.online.base import ViewTable, newest_per_key


def _view(ttl: timedelta = timedelta(0), **features: ValueType) -> FeatureView:
    return FeatureView(
        name="stats",
        entities=[Entity(name="user", join_keys=(Field("user_id", Int64),))],
        schema=[Field(f, t) for f, t in (features or {"value": Int64}).items()],
        source=ParquetSource(path="stats"),
        ttl=ttl,
    )


# -- set names -----------------------------------------------------------------------


def test_short_set_names_are_project_dot_view() -> None:
    assert set_name("fraud", "user_stats") == "fraud.user_stats"
    assert set_name("my-team.prod", "v") == "my-team.prod.v"
    exactly = "p" * 61
    assert set_name(exactly, "v") == exactly + ".v"  # 63 characters


def test_long_set_names_are_shortened_stably_and_distinctly() -> None:
    project = "a_project_with_a_rather_long_name"
    first = set_name(project, "transactions_per_merchant_last_hour")
    second = set_name(project, "transactions_per_merchant_last_days")
    assert len(first) == len(second) == 63
    assert first != second
    assert first == set_name(project, "transactions_per_merchant_last_hour")
    assert first.startswith(f"{project}.transact") and "#" in first
    assert set_name("p" * 62, "v") != set_name("p" * 62, "w")


def test_shortened_names_never_equal_full_names() -> None:
    # Only shortened names contain '#', and a name with '#' is never used as it is.
    assert "#" in set_name("team#1", "v")
    assert set_name("team#1", "v") != "team#1.v"
    assert "#" not in set_name("team_1", "v")


@pytest.mark.parametrize("project", ["a:b", "a;b", "a b", "prøject", "a/b"])
def test_unsafe_characters_are_hashed_away(project: str) -> None:
    name = set_name(project, "v")
    assert len(name.encode()) <= 63
    assert all(c.isascii() and (c.isalnum() or c in "_.-#") for c in name)
    assert name != set_name(project + "x", "v")


# -- bins and values ---------------------------------------------------------------


def test_bin_names_come_from_the_registry_and_follow_aerospike_rules() -> None:
    view = _view(a=Int64, b=String)
    table = ViewTable("p", view, {"a": "f0", "b": "f1"})
    assert bin_name(table, "a") == "f0"
    with pytest.raises(InvalidArgumentError, match="has no feature 'zz'"):
        bin_name(table, "zz")
    with pytest.raises(FailedPreconditionError, match="run `quiver apply`"):
        bin_name(ViewTable("p", view, {"a": "f0"}), "b")
    for bad in ("_e", "_c", "x" * 16, ""):
        with pytest.raises(FailedPreconditionError, match="cannot be an Aerospike bin"):
            bin_name(ViewTable("p", view, {"a": bad, "b": "f1"}), "a")


def test_layouts_read_only_the_event_time_and_the_requested_bins() -> None:
    table = ViewTable("p", _view(a=Int64, b=Bool, c=Bytes), {"a": "f0", "b": "f1", "c": "f2"})
    layout = read_layout(table, ["c", "a"])
    assert layout.set_name == "p.stats"
    assert layout.read_bins == ["_e", "f2", "f0"]
    assert layout.read_ops == [
        {"op": aerospike.OPERATOR_READ, "bin": b} for b in ("_e", "f2", "f0")
    ]
    written = write_layout(table)
    assert written.bins == ("f0", "f1", "f2") and written.ttl == aerospike.TTL_NEVER_EXPIRE


def test_values_are_converted_only_where_aerospike_differs() -> None:
    for dtype in (Int64, Int32, Float64, Float32, String, Timestamp):
        assert decoder(dtype) is None
    to_bool, to_bytes = decoder(Bool), decoder(Bytes)
    assert to_bool is not None and to_bytes is not None
    assert to_bool(1) is True and to_bool(False) is False and to_bool(None) is None
    assert type(to_bytes(bytearray(b"\x00\x01"))) is bytes
    assert to_bytes(b"x") == b"x"


def test_record_ttl_follows_the_view() -> None:
    assert record_ttl(_view(timedelta(hours=2))) == 7200
    # 0 would mean the namespace default: never expire must be explicit.
    assert record_ttl(_view(timedelta(0))) == aerospike.TTL_NEVER_EXPIRE
    assert record_ttl(_view(timedelta(seconds=MAX_TTL_SECONDS))) == MAX_TTL_SECONDS
    assert record_ttl(_view(timedelta(days=365 * 20))) == aerospike.TTL_NEVER_EXPIRE


# -- the write rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_ts", "created_ts"),
    [(0, 0), (1_714_521_600_000_000, 5), (-1, 2**62), (2**63 - 1, -(2**63))],
)
def test_the_write_filter_is_the_compiled_expression(event_ts: int, created_ts: int) -> None:
    make = WriteFilter()
    assert make.fast  # the installed client is one the fast path was checked against
    assert make(event_ts, created_ts) == compile_write_filter(event_ts, created_ts)
    # Filling one row's filter leaves the template untouched for the next.
    assert make(7, 8) == compile_write_filter(7, 8)


@pytest.mark.parametrize("version", ["18.0.0", "20.1.0", "", "unknown"])
def test_an_unverified_client_falls_back_to_the_public_compile(version: str) -> None:
    make = WriteFilter(version)
    assert not make.fast
    assert make(5, 6) == compile_write_filter(5, 6)


def evaluate(expression: list[Any], record: dict[str, int]) -> Any:
    """Evaluate a compiled filter the way the server does, for the operators it uses.

    Ops are the helpers' numbers (aerospike_helpers.expressions.resources._ExprOp);
    children follow their parent in prefix order.
    """
    position = 0

    def node() -> Any:
        nonlocal position
        op, _, fixed, children = expression[position]
        position += 1
        if op == 200:  # value
            return fixed["val"]
        if op == 81:  # bin
            return record.get(fixed["bin"])
        if op == 83:  # bin exists
            return fixed["bin"] in record
        if op == 150:  # end of variadic arguments
            return None
        args = []
        while True:
            if op in (16, 17) and expression[position][0] == 150:  # and/or end marker
                position += 1
                break
            args.append(node())
            if op not in (16, 17) and len(args) == children:
                break
        if op == 18:
            return not args[0]
        if op == 16:
            return all(args)
        if op == 17:
            return any(args)
        left, right = args
        if left is None or right is None:
            return False
        return {1: left == right, 5: left < right, 6: left <= right}[op]

    return node()


@settings(max_examples=200, deadline=None)
@given(st.integers(-5, 5), st.integers(-5, 5), st.one_of(st.none(), st.tuples(
    st.integers(-5, 5), st.integers(-5, 5))))
def test_the_filter_is_the_write_rule(event_ts: int, created_ts: int,
                                      stored: tuple[int, int] | None) -> None:
    """A row replaces the stored one only if (event, created) >= stored, or none is stored."""
    record = {} if stored is None else {EVENT_BIN: stored[0], CREATED_BIN: stored[1]}
    expected = stored is None or (event_ts, created_ts) >= stored
    assert evaluate(compile_write_filter(event_ts, created_ts), record) is expected
    assert evaluate(WriteFilter()(event_ts, created_ts), record) is expected


def test_newest_row_per_key_wins_by_event_then_created_then_position() -> None:
    keys = [b"a", b"a", b"b", b"b", b"c", b"a", b"b"]
    events = [9, 1, 1, 9, 0, 9, 9]
    created = [1, 1, 1, 2, 0, 1, 1]
    # a: rows 0 and 5 tie, the later wins; b: row 3 has the greater created time.
    assert newest_per_key(keys, events, created) == [3, 4, 5]


# -- client configuration ------------------------------------------------------------


def test_hosts_are_parsed_with_default_port_ipv6_and_tls_names() -> None:
    assert parse_hosts(["10.0.0.1:3100", "db", "[::1]:3000", "[fe80::1]"], None) == [
        ("10.0.0.1", 3100), ("db", 3000), ("::1", 3000), ("fe80::1", 3000),
    ]
    assert parse_hosts(["db:4333"], "cluster-a") == [("db", 4333, "cluster-a")]
    for bad in ["db:port", "db:0", ":3000", "db:70000"]:
        with pytest.raises(InvalidArgumentError, match=r"online_store.hosts\[0\]"):
            parse_hosts([bad], None)


def test_client_config_carries_timeouts_retries_and_replica() -> None:
    config = AerospikeOnlineStoreConfig(
        hosts=["a:3000", "b:3001"], connect_timeout_ms=700, read_timeout_ms=20,
        write_timeout_ms=900, max_retries=3, replica="master",
    )
    client = client_config(config, env={})
    assert client["hosts"] == [("a", 3000), ("b", 3001)]
    assert client["connect_timeout"] == 700
    assert client["send_bool_as"] == aerospike.AS_BOOL
    assert "user" not in client and "tls" not in client
    batch = client["policies"]["batch"]
    assert batch == read_policy(config)
    assert (batch["total_timeout"], batch["max_retries"]) == (20, 3)
    assert batch["replica"] == aerospike.POLICY_REPLICA_MASTER
    parent = client["policies"]["batch_parent_write"]
    assert parent == write_policy(config)
    assert (parent["total_timeout"], parent["max_retries"]) == (900, 3)
    assert client["policies"]["info"] == {"timeout": 700}


@pytest.mark.parametrize(
    ("replica", "constant"),
    [
        ("master", aerospike.POLICY_REPLICA_MASTER),
        ("sequence", aerospike.POLICY_REPLICA_SEQUENCE),
        ("prefer_rack", aerospike.POLICY_REPLICA_PREFER_RACK),
        ("any", aerospike.POLICY_REPLICA_ANY),
    ],
)
def test_every_replica_setting_maps_to_a_client_policy(replica: str, constant: int) -> None:
    config = AerospikeOnlineStoreConfig(replica=replica)  # type: ignore[arg-type]
    client = client_config(config, env={})
    assert client["policies"]["batch"]["replica"] == constant
    assert client.get("rack_aware", False) is (replica == "prefer_rack")


def test_user_and_password_from_the_named_environment_variable() -> None:
    config = AerospikeOnlineStoreConfig(user="svc", password_env="AS_PW")
    client = client_config(config, env={"AS_PW": "s3cret"})
    assert (client["user"], client["password"]) == ("svc", "s3cret")
    assert redacted(client)["password"] == "***"
    with pytest.raises(InvalidArgumentError, match="AS_PW") as caught:
        client_config(config, env={})
    assert "online_store.password_env" in str(caught.value)


def test_tls_settings_and_tls_name_on_every_host() -> None:
    config = AerospikeOnlineStoreConfig(
        hosts=["a:4333", "b:4333"],
        tls=AerospikeTlsConfig(enabled=True, name="cluster-a", cafile="/etc/ca.pem"),
    )
    client = client_config(config, env={})
    assert client["tls"] == {"enable": True, "cafile": "/etc/ca.pem"}
    assert client["hosts"] == [("a", 4333, "cluster-a"), ("b", 4333, "cluster-a")]
    untouched = AerospikeOnlineStoreConfig(tls=AerospikeTlsConfig(name="ignored"))
    assert "tls" not in client_config(untouched, env={})


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_the_real_client_accepts_the_configuration() -> None:
    """validate_keys makes the client reject unknown keys before connecting, so
    failing to connect (rather than a ParamError) means every key is valid."""
    config = AerospikeOnlineStoreConfig(
        hosts=[f"127.0.0.1:{_unused_port()}"], user="svc", replica="prefer_rack",
        tls=AerospikeTlsConfig(enabled=False),
    )
    with pytest.raises(aerospike_exception.ConnectionError):
        aerospike.client(client_config(config, env={"QUIVER_AEROSPIKE_PASSWORD": "x"}))


def test_the_store_starts_while_the_cluster_is_down() -> None:
    from quiver_server.online.aerospike import AerospikeOnlineStore

    config = AerospikeOnlineStoreConfig(hosts=[f"127.0.0.1:{_unused_port()}"])
    store = AerospikeOnlineStore(config)
    try:
        assert store.healthy() is False
        table = ViewTable("p", _view(), {"value": "f0"})
        with pytest.raises(UnavailableError, match=r"cannot connect: ConnectionError \(code -10\)"):
            store.delete(table, [b"k"])
    finally:
        store.close()
    with pytest.raises(UnavailableError, match="is closed"):
        store.delete(table, [b"k"])


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (9, DeadlineExceededError),  # timeout
        (-10, UnavailableError),  # connection
        (-15, UnavailableError),  # no response
        (1, UnavailableError),  # server error, e.g. no nodes
        (8, UnavailableError),  # server full
        (14, UnavailableError),  # hot key
        (18, UnavailableError),  # device overload
        (152, UnavailableError),  # batch queues full
        (20, FailedPreconditionError),  # namespace not found
        (22, FailedPreconditionError),  # forbidden, e.g. TTL without nsup
        (151, FailedPreconditionError),  # batch over batch-max-requests
        (-2, InvalidArgumentError),  # parameter
        (13, InvalidArgumentError),  # record too big
        (12345, UnavailableError),  # unknown
    ],
)
def test_result_codes_map_to_quiver_errors(code: int, error: type[Exception]) -> None:
    assert type(error_for_code(code, "m")) is error


def test_codes_and_exceptions_are_described_by_the_clients_names() -> None:
    assert describe_code(9) == "TimeoutError (code 9)"
    assert describe_code(-10) == "ConnectionError (code -10)"
    assert describe_code(27) == "FilteredOut (code 27)"
    assert describe_code(12345) == "code 12345"
    with pytest.raises(aerospike_exception.AerospikeError) as caught:
        aerospike.client({"hosts": [("127.0.0.1", _unused_port())]})
    assert describe_exception(caught.value).startswith("ConnectionError (code -10): ")


def test_a_value_of_the_wrong_type_is_named() -> None:
    from quiver_server.online.aerospike_layout import find_bad_value

    view = _view(a=Int64, b=Float64, c=Bytes)
    columns = [[1, None, True], [1.5, 2, None], [b"x", bytearray(b"y"), None]]
    assert find_bad_value(view, ["a", "b", "c"], columns) is None
    columns[2][2] = "text"
    assert find_bad_value(view, ["a", "b", "c"], columns) == (
        "feature 'c' is bytes but row 2 holds str 'text'"
    )


def test_one_bin_list_serves_several_views_only_when_it_reads_nothing_unwanted() -> None:
    from quiver_server.online.aerospike_layout import shared_bins

    wide = ViewTable("p", _view(a=Int64, b=Int64, c=Int64), {"a": "f0", "b": "f1", "c": "f2"})
    narrow = ViewTable("p", _view(x=String), {"x": "f0"})
    # Whole views: the union asks each record only for bins it wants.
    assert shared_bins([read_layout(wide, ["a", "b", "c"]), read_layout(narrow, ["x"])]) == [
        "_e", "f0", "f1", "f2",
    ]
    assert shared_bins([read_layout(wide, ["b"]), read_layout(wide, ["b"])]) == ["_e", "f1"]
    # `wide` read in part: the union would also return its unwanted f0.
    assert shared_bins([read_layout(wide, ["b"]), read_layout(narrow, ["x"])]) is None
