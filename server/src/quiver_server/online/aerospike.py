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
(`aerospike_expressions`). Deletes: batch removes.

TTL: a record expires ``ttl`` seconds after its last write when its view has a
ttl, and never otherwise. The namespace must allow TTLs for that: a server with
``nsup-period 0`` (and no ``allow-ttl-without-nsup``) refuses writes with a TTL,
which surface as FailedPreconditionError (ForbiddenError, code 22).

Failures: while the cluster cannot be reached, calls raise UnavailableError at
once, naming the cause; timeouts raise DeadlineExceededError. The store can be
created while the cluster is down (the server starts and reports NOT_SERVING);
it then retries connecting at most once a second, from calls and from
`healthy()` (see `aerospike_connection`).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aerospike
from aerospike import exception as aerospike_exception
from aerospike_helpers.batch.records import BatchRecords, Read, Write

from quiver.errors import InvalidArgumentError, QuiverError
from quiver_server.config import AerospikeOnlineStoreConfig
from quiver_server.online.aerospike_connection import Connection
from quiver_server.online.aerospike_expressions import CREATED_BIN, EVENT_BIN, WriteFilter
from quiver_server.online.aerospike_layout import (
    ReadLayout,
    WriteLayout,
    find_bad_value,
    read_layout,
    set_name,
    shared_bins,
    write_layout,
)
from quiver_server.online.aerospike_policy import (
    FILTERED_OUT,
    OK,
    RECORD_NOT_FOUND,
    read_policy,
)
from quiver_server.online.base import (
    PreparedCache,
    ViewRead,
    ViewReadResult,
    ViewTable,
    WriteBatch,
    WriteResult,
    check_batch,
    write_rows,
)

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

    Raises:
        InvalidArgumentError: a malformed host, or a user whose password variable
            is not set. An unreachable cluster is not an error here: see the
            module docstring.
    """

    def __init__(self, config: AerospikeOnlineStoreConfig) -> None:
        self.config = config
        self.namespace = config.namespace
        self._read_policy = read_policy(config)
        self._read_layouts = PreparedCache(read_layout)
        self._write_layouts = PreparedCache(lambda table, _: write_layout(table))
        self._filter = WriteFilter()
        self._connection = Connection(config)

    # -- OnlineStore -----------------------------------------------------------------

    def write(self, table: ViewTable, batch: WriteBatch) -> WriteResult:
        """Write `batch` following the write rule; returns rows and rows superseded.

        Chunks of `batch_size` records are written one after another; if one
        fails, the chunks before it stay written (writing the batch again is
        safe: the filter makes it idempotent).
        """
        n = len(batch)
        if n == 0:
            check_batch(table, batch)
            return WriteResult(0, 0)
        layout: WriteLayout = self._write_layouts.get(table)
        rows = write_rows(table, batch, layout.features)
        keys, event_ts, created_ts = rows.keys, rows.event_ts, rows.created_ts
        columns: list[Sequence[Any]] = [
            [None] * len(keys) if column is None else column for column in rows.columns
        ]
        client = self._connection.client()
        written = superseded = 0
        size = self.config.batch_size
        for start in range(0, len(keys), size):
            end = start + size
            action = f"writing feature view {table.name!r}"
            chunk = [column[start:end] for column in columns]
            with _gc_paused():
                records = self._write_records(
                    layout, keys[start:end], event_ts[start:end], created_ts[start:end], chunk
                )
                try:
                    with self._connection.errors(action):
                        result = client.batch_write(BatchRecords(records))
                except QuiverError as exc:
                    # The client's generic error for a value it cannot serialize.
                    if type(exc.__cause__) is aerospike_exception.ClientError:
                        problem = _bad_timestamp(
                            event_ts[start:end], created_ts[start:end]
                        ) or find_bad_value(layout.view, layout.features, chunk)
                        if problem is not None:
                            raise InvalidArgumentError(
                                f"{self._connection.where}: {action}: bad value: {problem}"
                            ) from exc.__cause__
                    raise
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
                raise self._connection.batch_error(
                    client,
                    result,
                    failed,
                    f"{action}: {len(records) - applied - filtered} of {len(records)} rows "
                    f"failed (rows applied before: {written}; writing again is safe)",
                    ttl=layout.ttl,
                )
            written += applied
            superseded += filtered
        return WriteResult(rows=n, superseded=rows.superseded + superseded)

    def read(self, reads: Sequence[ViewRead]) -> list[ViewReadResult]:
        """Read several views in one batch call; each result is aligned with its keys."""
        spans: list[_Span] = []
        keys: list[tuple[str, str, bytearray]] = []
        for request in reads:
            layout: ReadLayout = self._read_layouts.get(request.table, tuple(request.features))
            unique: dict[bytes, int] = {}
            positions = [unique.setdefault(k, len(unique)) for k in request.keys]
            spans.append(_Span(layout, len(keys), len(unique), positions))
            namespace, set_ = self.namespace, layout.set_name
            keys.extend((namespace, set_, bytearray(k)) for k in unique)
        if not keys:
            return [ViewReadResult.not_found(span.layout.features, 0) for span in spans]
        client = self._connection.client()
        action = f"reading {len(keys)} records of {len(spans)} feature views"
        shared = shared_bins([span.layout for span in spans])
        with self._connection.errors(action):
            if shared is not None:
                # One list of bins for every record: the lighter batch call
                # (measured: about half the time of per-record reads at 300 keys).
                result = client.batch_read(keys, shared, self._read_policy)
            else:
                # Views asking for different bins: one Read per record, still one call.
                requests = [
                    Read(key, span.layout.read_ops)
                    for span in spans
                    for key in keys[span.start : span.start + span.count]
                ]
                result = client.batch_write(BatchRecords(requests), self._read_policy)
        records = result.batch_records
        if len(records) != len(keys):
            raise self._connection.batch_error(
                client, result, None, f"{action}: the batch did not complete"
            )
        bins: list[dict[str, Any] | None] = []
        for record in records:
            code = record.result
            if code == OK:
                bins.append(record.record[2])
            elif code == RECORD_NOT_FOUND:
                bins.append(None)
            else:
                raise self._connection.batch_error(
                    client, result, code, f"{action}: a record could not be read"
                )
        return [self._view_result(span, bins) for span in spans]

    def delete(self, table: ViewTable, keys: Sequence[bytes]) -> int:
        """Remove the records of `keys` from the view; returns how many existed."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return 0
        client = self._connection.client()
        namespace = self.namespace
        set_ = set_name(table.project, table.name)
        action = f"deleting from feature view {table.name!r}"
        deleted = 0
        size = self.config.batch_size
        for start in range(0, len(unique), size):
            chunk = [(namespace, set_, bytearray(k)) for k in unique[start : start + size]]
            with self._connection.errors(action):
                result = client.batch_remove(chunk)
            records = result.batch_records
            if len(records) != len(chunk):
                raise self._connection.batch_error(
                    client, result, None, f"{action}: the batch did not complete"
                )
            for record in records:
                if record.result == OK:
                    deleted += 1
                elif record.result != RECORD_NOT_FOUND:
                    raise self._connection.batch_error(
                        client, result, record.result,
                        f"{action}: a record could not be removed (removed before: {deleted})",
                    )
        return deleted

    def healthy(self) -> bool:
        """Whether the cluster answers an info ping right now (and a reconnect, if due)."""
        return self._connection.healthy()

    def close(self) -> None:
        """Close the connection; later calls raise UnavailableError."""
        self._connection.close()

    def __enter__(self) -> AerospikeOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AerospikeOnlineStore({self._connection.hosts!r}, {self.namespace!r})"

    # -- layouts and records ---------------------------------------------------------

    def _write_records(
        self,
        layout: WriteLayout,
        keys: Sequence[bytes],
        event_ts: Sequence[int],
        created_ts: Sequence[int],
        columns: list[Sequence[Any]],
    ) -> list[Write]:
        """One `Write` per row: replace the record if the filter lets it.

        Built column by column (comprehensions, no per-row unpacking): this is
        the Python half of the write cost.
        """
        # The operation dicts `aerospike_helpers.operations.operations.write` builds.
        op_columns: list[list[dict[str, Any] | None]] = [
            [{"op": _WRITE, "bin": EVENT_BIN, "val": v} for v in event_ts],
            [{"op": _WRITE, "bin": CREATED_BIN, "val": v} for v in created_ts],
        ]
        nulls = False
        for bin_name, column in zip(layout.bins, columns, strict=True):
            if None in column:
                nulls = True
                op_columns.append([
                    None if v is None else {"op": _WRITE, "bin": bin_name, "val": v}
                    for v in column
                ])
            else:
                op_columns.append([{"op": _WRITE, "bin": bin_name, "val": v} for v in column])
        # A null feature is no bin at all (the record is replaced, so no old value stays).
        row_ops = (
            [list(filter(None, ops)) for ops in zip(*op_columns, strict=True)]
            if nulls
            else [list(ops) for ops in zip(*op_columns, strict=True)]
        )
        namespace, set_, ttl, make_filter = (
            self.namespace, layout.set_name, layout.ttl, self._filter
        )
        return [
            Write(
                (namespace, set_, bytearray(key)),
                ops,
                policy={
                    "expressions": make_filter(event, created),
                    # Replace, not update: a new row's null features must not keep old values.
                    "exists": _REPLACE,
                    "ttl": ttl,
                },
            )
            for key, event, created, ops in zip(keys, event_ts, created_ts, row_ops, strict=True)
        ]

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


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while one chunk of records is written.

    A chunk allocates some 100,000 small acyclic dicts, lists and tuples (the
    records, then the client's results); the collections they trigger find
    nothing to free yet scan every live object each time. Measured: writing took
    twice as long with them. Collection resumes right after the chunk.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _bad_timestamp(event_ts: Sequence[Any], created_ts: Sequence[Any]) -> str | None:
    for name, column in (("event_ts", event_ts), ("created_ts", created_ts)):
        for row, value in enumerate(column):
            if not isinstance(value, int):
                return (
                    f"{name} must be int microseconds but row {row} holds "
                    f"{type(value).__name__} {value!r:.60}"
                )
    return None

