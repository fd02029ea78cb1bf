"""The production online store: an Aerospike cluster, through the official client.

Layout (see `aerospike_layout`): one record per (feature view, entity key) in
the configured namespace, set ``<project>.<view>`` (hashed when longer than 63
bytes), key = the entity's canonical key bytes; bins ``_e`` and ``_c`` hold the
event and created timestamps (int microseconds) and one bin per feature, named
by the registry's short storage name, holds its value. Null features have no bin.

Reads: every view and entity of one `read` call goes to the cluster in one batch
call; only the requested bins come back. Writes: batches of `batch_size`
records, each replacing the whole record, guarded by a filter expression on the
stored ``_e``/``_c`` so the server itself refuses to go back in time
(`aerospike_layout.compile_write_filter`). Deletes: batch removes.

TTL: a record expires ``ttl`` seconds after its last write when its view has a
ttl, and never otherwise. The namespace must allow TTLs for that: a server with
``nsup-period 0`` (and no ``allow-ttl-without-nsup``) refuses writes with a TTL,
which surface as FailedPreconditionError (ForbiddenError, code 22).

Failures: while the cluster cannot be reached, calls raise UnavailableError at
once, naming the cause; timeouts raise DeadlineExceededError. The store can be
created while the cluster is down (the server starts and reports NOT_SERVING);
it then retries connecting at most once per `RECONNECT_INTERVAL_SECONDS`, from
calls and from `healthy()`. Once connected, the client's own tend thread follows
the cluster as nodes leave and come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import aerospike
import structlog
from aerospike import exception as aerospike_exception
from aerospike_helpers.batch.records import BatchRecords, Read, Write

from quiver.errors import InvalidArgumentError, QuiverError, UnavailableError
from quiver_server.config import AerospikeOnlineStoreConfig
from quiver_server.online.aerospike_layout import (
    CREATED_BIN,
    EVENT_BIN,
    ReadLayout,
    WriteFilter,
    WriteLayout,
    newest_per_key,
    read_layout,
    write_layout,
)
from quiver_server.online.aerospike_policy import (
    BATCH_FAILED,
    FILTERED_OUT,
    FORBIDDEN,
    OK,
    PARAM_ERROR,
    RECORD_NOT_FOUND,
    client_config,
    describe_code,
    describe_exception,
    error_for_code,
    read_policy,
    redacted,
    write_policy,
)
from quiver_server.online.base import (
    ViewRead,
    ViewReadResult,
    ViewTable,
    WriteBatch,
    WriteResult,
)

log = structlog.get_logger(__name__)

# How often a store without a connection tries again (calls in between fail at once).
RECONNECT_INTERVAL_SECONDS = 1.0
# Budget of the info ping behind `healthy()`.
HEALTH_TIMEOUT_MS = 500

_WRITE = aerospike.OPERATOR_WRITE
_REPLACE = aerospike.POLICY_EXISTS_CREATE_OR_REPLACE


@dataclass
class _Span:
    """Where one `ViewRead` sits in the batch: its unique keys, and each request key's index."""

    layout: ReadLayout
    start: int
    count: int
    positions: list[int]


class AerospikeOnlineStore:
    """An `OnlineStore` in an Aerospike cluster.

    Args:
        config: The ``online_store`` section of ``quiver.yaml``.
        project: The project served; sets are named from each table's own project.

    Raises:
        InvalidArgumentError: a malformed host, or a user whose password variable
            is not set. An unreachable cluster is not an error here: see the
            module docstring.
    """

    def __init__(self, config: AerospikeOnlineStoreConfig, project: str) -> None:
        self.config = config
        self.project = project
        self.namespace = config.namespace
        self._client_config = client_config(config)
        self._read_policy = read_policy(config)
        self._write_policy = write_policy(config)
        self._where = f"online store aerospike at {','.join(config.hosts)} (namespace {self.namespace!r})"
        self._client: aerospike.Client | None = None
        self._lock = threading.Lock()  # held while connecting or closing
        self._closed = False
        self._last_attempt = float("-inf")
        self._last_error = "not connected yet"
        self._read_layouts: dict[tuple[str, str, tuple[str, ...]], ReadLayout] = {}
        self._write_layouts: dict[tuple[str, str], WriteLayout] = {}
        self._filter = WriteFilter()
        self._try_connect()

    # -- OnlineStore -----------------------------------------------------------------

    def write(self, table: ViewTable, batch: WriteBatch) -> WriteResult:
        """Write `batch` following the write rule; returns rows and rows superseded.

        Chunks of `batch_size` records are written one after another; if one
        fails, the chunks before it stay written (writing the batch again is
        safe: the filter makes it idempotent).
        """
        n = len(batch)
        _check_batch(table, batch)
        if n == 0:
            return WriteResult(0, 0)
        layout = self._write_layout(table)
        unknown = [f for f in batch.features if f not in layout.features]
        if unknown:
            raise InvalidArgumentError.for_field(
                "features",
                f"feature view {table.name!r} has no feature {unknown[0]!r}; "
                f"it has: {', '.join(layout.features)}",
            )
        keys, event_ts, created_ts = batch.keys, batch.event_ts, batch.created_ts
        columns: list[Sequence[Any]] = []
        for feature, convert in zip(layout.features, layout.encoders, strict=True):
            values = batch.features.get(feature)
            if values is None:
                columns.append(list(repeat(None, n)))
            elif convert is not None:
                columns.append([None if v is None else convert(v) for v in values])
            else:
                columns.append(values)
        losers = 0
        if len(set(keys)) != n:
            # Only each key's newest row can win; sending the others would only
            # make the server filter them out.
            picked = newest_per_key(keys, event_ts, created_ts)
            losers = n - len(picked)
            keys = [keys[i] for i in picked]
            event_ts = [event_ts[i] for i in picked]
            created_ts = [created_ts[i] for i in picked]
            columns = [[column[i] for i in picked] for column in columns]
        client = self._connected()
        written = superseded = 0
        size = self.config.batch_size
        rows = list(zip(keys, event_ts, created_ts, *columns, strict=True))
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            records = self._write_records(layout, chunk)
            action = f"writing feature view {table.name!r}"
            with self._errors(action):
                result = client.batch_write(BatchRecords(records))
            applied, filtered, failed = 0, 0, None
            for record in result.batch_records:
                code = record.result
                if code == OK:
                    applied += 1
                elif code == FILTERED_OUT:
                    filtered += 1
                elif failed is None:
                    failed = code
            if applied + filtered != len(records):
                raise self._batch_error(
                    client,
                    result,
                    failed,
                    f"{action}: {len(records) - applied - filtered} of {len(records)} rows "
                    f"failed (rows applied before: {written}; writing again is safe)",
                    ttl=layout.ttl,
                )
            written += applied
            superseded += filtered
        return WriteResult(rows=n, superseded=losers + superseded)

    def read(self, reads: Sequence[ViewRead]) -> list[ViewReadResult]:
        """Read several views in one batch call; each result is aligned with its keys."""
        spans: list[_Span] = []
        keys: list[tuple[str, str, bytearray]] = []
        for request in reads:
            layout = self._read_layout(request.table, tuple(request.features))
            unique: dict[bytes, int] = {}
            positions = [unique.setdefault(k, len(unique)) for k in request.keys]
            spans.append(_Span(layout, len(keys), len(unique), positions))
            namespace, set_name = self.namespace, layout.set_name
            keys.extend((namespace, set_name, bytearray(k)) for k in unique)
        if not keys:
            return [_not_found(span.layout.features, 0) for span in spans]
        client = self._connected()
        action = f"reading {len(keys)} records of {len(spans)} feature views"
        first = spans[0].layout.read_bins
        with self._errors(action):
            if all(span.layout.read_bins == first for span in spans):
                # One list of bins for every record: the lightest batch call.
                result = client.batch_read(keys, first, self._read_policy)
            else:
                # Views asking for different bins: one Read per record, still one call.
                records = [
                    Read(key, span.layout.read_ops)
                    for span in spans
                    for key in keys[span.start : span.start + span.count]
                ]
                result = client.batch_write(BatchRecords(records), self._read_policy)
        records = result.batch_records
        if len(records) != len(keys):
            raise self._batch_error(client, result, None, f"{action}: the batch did not complete")
        bins: list[dict[str, Any] | None] = []
        for record in records:
            code = record.result
            if code == OK:
                bins.append(record.record[2])
            elif code == RECORD_NOT_FOUND:
                bins.append(None)
            else:
                raise self._batch_error(client, result, code, f"{action}: a record could not be read")
        return [self._view_result(span, bins) for span in spans]

    def delete(self, table: ViewTable, keys: Sequence[bytes]) -> int:
        """Remove the records of `keys` from the view; returns how many existed."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return 0
        client = self._connected()
        namespace = self.namespace
        set_name = self._write_layout(table).set_name
        action = f"deleting from feature view {table.name!r}"
        deleted = 0
        size = self.config.batch_size
        for start in range(0, len(unique), size):
            chunk = [(namespace, set_name, bytearray(k)) for k in unique[start : start + size]]
            with self._errors(action):
                result = client.batch_remove(chunk)
            records = result.batch_records
            if len(records) != len(chunk):
                raise self._batch_error(
                    client, result, None, f"{action}: the batch did not complete"
                )
            for record in records:
                if record.result == OK:
                    deleted += 1
                elif record.result != RECORD_NOT_FOUND:
                    raise self._batch_error(
                        client, result, record.result,
                        f"{action}: a record could not be removed (removed before: {deleted})",
                    )
        return deleted

    def healthy(self) -> bool:
        """Whether the cluster answers an info ping within `HEALTH_TIMEOUT_MS`.

        Also the place a store without a connection retries, so a server that
        started while the cluster was down recovers without any request.
        """
        client = self._client or self._try_connect()
        if client is None or not client.is_connected():
            return False
        try:
            reply = client.info_random_node("status", {"timeout": HEALTH_TIMEOUT_MS})
        except aerospike_exception.AerospikeError:
            return False
        return "ok" in str(reply)

    def close(self) -> None:
        """Close the connection; later calls raise UnavailableError."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> AerospikeOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AerospikeOnlineStore({redacted(self._client_config)['hosts']!r}, {self.namespace!r})"

    # -- connection ------------------------------------------------------------------

    def _connected(self) -> aerospike.Client:
        """The client, connecting first if due; UnavailableError when there is none."""
        client = self._client or self._try_connect()
        if client is None:
            if self._closed:
                raise UnavailableError(f"{self._where} is closed")
            raise UnavailableError(
                f"{self._where} unavailable: cannot connect: {self._last_error} "
                f"(retrying at most every {RECONNECT_INTERVAL_SECONDS:g}s)"
            )
        return client

    def _try_connect(self) -> aerospike.Client | None:
        """Connect unless connected, closed, tried too recently or being tried by another thread."""
        if self._closed or time.monotonic() - self._last_attempt < RECONNECT_INTERVAL_SECONDS:
            return self._client
        if not self._lock.acquire(blocking=False):
            return self._client  # another thread is connecting; do not queue behind it
        try:
            if self._client is not None or self._closed:
                return self._client
            self._last_attempt = time.monotonic()
            try:
                client = aerospike.client(self._client_config)
            except aerospike_exception.ParamError as exc:
                # A configuration the client rejects: retrying cannot help.
                raise InvalidArgumentError.for_field(
                    "online_store", f"the Aerospike client rejects it: {describe_exception(exc)}"
                ) from exc
            except aerospike_exception.AerospikeError as exc:
                self._last_error = describe_exception(exc)
                log.warning("aerospike connect failed", where=self._where, error=self._last_error)
                return None
            problem = self._check_namespace(client)
            if problem is not None:
                client.close()
                self._last_error = problem
                log.warning("aerospike connect failed", where=self._where, error=problem)
                return None
            self._client = client
            log.info("aerospike connected", where=self._where)
            return client
        finally:
            self._lock.release()

    def _check_namespace(self, client: aerospike.Client) -> str | None:
        """Why the cluster cannot serve the namespace, or None when it can."""
        try:
            reply = client.info_random_node("namespaces", {"timeout": self.config.connect_timeout_ms})
        except aerospike_exception.AerospikeError as exc:
            return f"asking for namespaces: {describe_exception(exc)}"
        # The reply is "namespaces\t<ns1>;<ns2>\n".
        names = str(reply).strip().rpartition("\t")[2].split(";")
        if self.namespace not in names:
            return (
                f"namespace {self.namespace!r} is not configured on the cluster "
                f"(it has: {', '.join(n for n in names if n) or 'none'})"
            )
        return None

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Raise the client's exceptions inside the block as Quiver errors naming the cause."""
        try:
            yield
        except aerospike_exception.AerospikeError as exc:
            code = exc.code if isinstance(exc.code, int) else -1
            if code == PARAM_ERROR:
                # The client refused a value before sending anything (e.g. an int
                # past 64 bits, or a type Aerospike cannot store).
                message = f"{self._where}: {action}: bad value: {describe_exception(exc)}"
            else:
                message = f"{self._where} unavailable: {action}: {describe_exception(exc)}"
            raise error_for_code(code, message) from exc
        except (OverflowError, TypeError) as exc:
            raise InvalidArgumentError(
                f"{self._where}: {action}: bad value: {type(exc).__name__}: {exc}"
            ) from exc

    def _batch_error(
        self, client: aerospike.Client, result: Any, code: int | None, message: str, ttl: int = 0
    ) -> QuiverError:
        """The error for a batch that did not fully succeed.

        The whole batch's code says more than a record's (ConnectionError rather
        than each record's NoResponse), unless it is only "some records failed".
        """
        if result.result not in (OK, BATCH_FAILED) or code is None:
            code = result.result
        detail = describe_code(code)
        if not client.is_connected():
            detail += "; no node of the cluster is reachable"
        elif code == FORBIDDEN and 0 < ttl != aerospike.TTL_NEVER_EXPIRE:
            detail += (
                "; records of views with a ttl need a namespace that allows TTLs "
                "(nsup-period > 0, or allow-ttl-without-nsup true)"
            )
        return error_for_code(code, f"{self._where}: {message}: {detail}")

    # -- layouts and records ---------------------------------------------------------

    def _read_layout(self, table: ViewTable, features: tuple[str, ...]) -> ReadLayout:
        key = (table.project, table.name, features)
        layout = self._read_layouts.get(key)
        # Identity checks are cheap and catch a new registry version of the view.
        if layout is None or layout.view is not table.view or layout.bin_names is not table.bin_names:
            layout = read_layout(table, features)
            self._read_layouts[key] = layout
        return layout

    def _write_layout(self, table: ViewTable) -> WriteLayout:
        key = (table.project, table.name)
        layout = self._write_layouts.get(key)
        if layout is None or layout.view is not table.view or layout.bin_names is not table.bin_names:
            layout = write_layout(table)
            self._write_layouts[key] = layout
        return layout

    def _write_records(self, layout: WriteLayout, rows: list[tuple[Any, ...]]) -> list[Write]:
        namespace, set_name, ttl = self.namespace, layout.set_name, layout.ttl
        bins = layout.bins
        make_filter = self._filter
        records: list[Write] = []
        for key, event, created, *values in rows:
            # The operation dicts `aerospike_helpers.operations.operations.write` builds,
            # made inline: this loop runs once per row written.
            ops = [
                {"op": _WRITE, "bin": EVENT_BIN, "val": event},
                {"op": _WRITE, "bin": CREATED_BIN, "val": created},
            ]
            ops.extend(
                {"op": _WRITE, "bin": b, "val": v}
                for b, v in zip(bins, values, strict=True)
                if v is not None
            )
            policy = {
                "expressions": make_filter(event, created),
                # Replace, not update: a new row's null features must not keep old values.
                "exists": _REPLACE,
                "ttl": ttl,
            }
            records.append(Write((namespace, set_name, bytearray(key)), ops, policy=policy))
        return records

    def _view_result(self, span: _Span, bins: list[dict[str, Any] | None]) -> ViewReadResult:
        layout = span.layout
        found = bins[span.start : span.start + span.count]
        rows = [found[p] for p in span.positions]
        event_ts = [None if r is None else r.get(EVENT_BIN) for r in rows]
        values: dict[str, list[Any]] = {}
        for feature, bin_name, convert in zip(
            layout.features, layout.bins, layout.decoders, strict=True
        ):
            column = [None if r is None else r.get(bin_name) for r in rows]
            if convert is not None:
                column = [None if v is None else convert(v) for v in column]
            values[feature] = column
        return ViewReadResult(event_ts, values)


def _check_batch(table: ViewTable, batch: WriteBatch) -> None:
    n = len(batch.keys)
    lengths = {"event_ts": len(batch.event_ts), "created_ts": len(batch.created_ts)}
    lengths.update({f"features[{f!r}]": len(v) for f, v in batch.features.items()})
    for name, length in lengths.items():
        if length != n:
            raise InvalidArgumentError.for_field(
                name,
                f"has {length} values but the batch for feature view {table.name!r} has {n} keys",
            )
    for name, column in (("event_ts", batch.event_ts), ("created_ts", batch.created_ts)):
        if any(v is None for v in column):
            raise InvalidArgumentError.for_field(
                name, f"timestamps of feature view {table.name!r} must not be null"
            )


def _not_found(features: Sequence[str], n: int) -> ViewReadResult:
    return ViewReadResult([None] * n, {f: [None] * n for f in features})
