"""The embedded online store: one SQLite file in WAL mode.

Layout: one ``WITHOUT ROWID`` table per (project, feature view), named
``fv:<project>:<view>`` (quoted, so the separator cannot collide with names and
a project called ``sqlite_x`` does not hit SQLite's reserved prefix)::

    "__key" BLOB PRIMARY KEY, "__event_ts" INTEGER, "__created_ts" INTEGER,
    "<bin>" <type>, ...          -- one column per feature, named by its bin

Tables and columns are created lazily by the first write that needs them and
never dropped, just as bin names are never reused. Values are stored by the
feature's type: integers, timestamps (int microseconds) and booleans (0/1) as
INTEGER, floats as REAL, strings as TEXT, bytes as BLOB. SQLite has no NaN: a
NaN float is stored, and read back, as null.

Deletes are privacy erasures: connections run with ``secure_delete`` (freed
space is zeroed, so neither a deleted row nor a value overwritten earlier
lingers in the file), and a delete ends with a truncating WAL checkpoint.

A row is the view's state at its event time: a write replaces every feature of
the stored row, and features missing from a `WriteBatch` are stored as null
(rather than keeping an older row's value next to a newer event timestamp).

Concurrency: every thread gets its own connection (reads never wait for each
other, and WAL lets them run while a write commits); each `write` is one
``BEGIN IMMEDIATE`` transaction, so concurrent writers, in this or other
processes, serialize on the file lock and wait up to `busy_timeout`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any

from quiver import FeatureView
from quiver.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    QuiverError,
    UnavailableError,
)
from quiver.types import ValueType
from quiver_server.online.base import (
    PreparedCache,
    ViewRead,
    ViewReadResult,
    ViewTable,
    WriteBatch,
    WriteResult,
    check_batch,
    feature_type,
    write_rows,
)
from quiver_server.registry.layout import storage_name

KEY = "__key"
EVENT_TS = "__event_ts"
CREATED_TS = "__created_ts"
_RESERVED = frozenset({KEY, EVENT_TS, CREATED_TS})

_SQL_TYPES: dict[ValueType, str] = {
    ValueType.INT64: "INTEGER",
    ValueType.INT32: "INTEGER",
    ValueType.FLOAT64: "REAL",
    ValueType.FLOAT32: "REAL",
    ValueType.BOOL: "INTEGER",
    ValueType.STRING: "TEXT",
    ValueType.BYTES: "BLOB",
    ValueType.TIMESTAMP: "INTEGER",
}

# Reads pad their IN lists to a power of two so a handful of statements per
# view serve every request size and stay in each connection's statement cache.
_MAX_IN_LIST = 32_766
_STATEMENT_CACHE = 1024
_WAL_CHECKPOINT_PAGES = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def quote(name: str) -> str:
    """`name` as an SQL identifier, safe whatever it contains."""
    return '"' + name.replace('"', '""') + '"'


def table_name(project: str, view: str) -> str:
    """The (unquoted) SQLite table holding `view` of `project`."""
    return f"fv:{project}:{view}"


@dataclass
class _ReadPlan:
    """SQL and conversions to read some features of one view; built once, reused."""

    view: FeatureView
    table: str
    features: tuple[str, ...]
    bins: tuple[str | None, ...]  # aligned with `features`; None: no such column yet
    bools: tuple[int, ...]  # positions in `features` holding booleans
    prefix: str
    by_size: dict[int, str] = field(default_factory=dict)

    def sql(self, size: int) -> str:
        text = self.by_size.get(size)
        if text is None:
            text = self.prefix + "(" + ",".join("?" * size) + ")"
            self.by_size[size] = text
        return text


@dataclass(frozen=True)
class _WritePlan:
    view: FeatureView
    table: str
    features: tuple[str, ...]  # every feature of the view, in column order
    bins: tuple[str, ...]
    create: str
    upsert: str


class SqliteOnlineStore:
    """An `OnlineStore` in one local SQLite file.

    Args:
        path: The database file; created, with its parent directories, if missing.
        busy_timeout: Seconds a write waits for another writer's lock before
            failing with `UnavailableError`.
        name: How errors name the file (default `path`). Errors reach API callers,
            so a server names it as its configuration does, never by its absolute path.

    Raises:
        UnavailableError: the file cannot be created or opened.
    """

    def __init__(self, path: str, busy_timeout: float = 5.0, *, name: str | None = None) -> None:
        if path == ":memory:" or path.startswith("file:"):
            # Every thread has its own connection, so an in-memory database
            # would silently be a different, empty one per thread.
            raise InvalidArgumentError.for_field(
                "online_store.path", f"must be a file path, got {path!r}"
            )
        self.path = path
        self.where = f"online store sqlite at {name or path!r}"
        self._timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._read_plans = PreparedCache(_build_read_plan)
        self._write_plans = PreparedCache(lambda table, _: _build_write_plan(table))
        # Columns known to exist per table; tables and columns are never dropped,
        # so this only grows and a hit saves a schema check per write.
        self._known_columns: dict[str, frozenset[str]] = {}
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(
                f"{self.where} unavailable: cannot create its directory: "
                f"{exc.strerror or type(exc).__name__}"
            ) from exc
        try:
            with self._errors("opening"):
                conn = self._conn()
                # WAL is a property of the file: set once, every connection sees it.
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except BaseException:
            self.close()
            raise
        if str(mode).lower() != "wal":
            self.close()
            raise UnavailableError(
                f"{self.where} unavailable: cannot switch to WAL mode "
                f"(journal mode is {mode!r}; is it on a network filesystem?)"
            )
        self._max_in = min(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), _MAX_IN_LIST)

    # -- OnlineStore -----------------------------------------------------------------

    def write(self, table: ViewTable, batch: WriteBatch) -> WriteResult:
        """Upsert `batch` following the write rule; returns rows and rows superseded."""
        n = len(batch)
        if n == 0:
            check_batch(table, batch)
            return WriteResult(0, 0)
        plan = self._write_plans.get(table)
        rows = write_rows(table, batch, plan.features)
        columns: list[Sequence[Any] | repeat[Any]] = [
            repeat(None) if values is None else values for values in rows.columns
        ]
        keys = rows.keys
        conn = self._conn()
        with self._errors(f"writing feature view {table.name!r}"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                added = self._ensure_columns(conn, plan)
                cursor = conn.executemany(
                    plan.upsert, zip(keys, rows.event_ts, rows.created_ts, *columns, strict=False)
                )
                applied = cursor.rowcount
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if added is not None:
            self._known_columns[plan.table] = added
        # rowcount counts applied rows only: the WHERE of DO UPDATE skips the rest.
        return WriteResult(rows=n, superseded=rows.superseded + (len(keys) - applied))

    def read(self, reads: Sequence[ViewRead]) -> list[ViewReadResult]:
        """Read several views; each result is aligned with its request's keys."""
        conn = self._conn()
        return [self._read_view(conn, r) for r in reads]

    def delete(self, table: ViewTable, keys: Sequence[bytes]) -> int:
        """Remove `keys` from the view; returns how many rows existed."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return 0
        conn = self._conn()
        name = quote(table_name(table.project, table.name))
        deleted = 0
        with self._errors(f"deleting from feature view {table.name!r}"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(unique), self._max_in):
                    chunk = unique[start : start + self._max_in]
                    sql = f"DELETE FROM {name} WHERE {quote(KEY)} IN ({','.join('?' * len(chunk))})"
                    deleted += conn.execute(sql, chunk).rowcount
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(
                    "no such table"
                ):
                    return 0
                raise
            if deleted:
                # Earlier WAL frames still hold the rows as they were: copy the
                # log into the file and empty it (a reader still on an older
                # snapshot makes this a partial checkpoint; autocheckpoints and
                # the next delete finish it).
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return deleted

    def healthy(self) -> bool:
        """Whether the file answers a query right now."""
        try:
            # Reads the file header, so a vanished or unreadable file shows.
            self._conn().execute("PRAGMA schema_version").fetchone()
        except (sqlite3.Error, UnavailableError):
            return False
        return True

    def close(self) -> None:
        """Close every thread's connection; later calls raise UnavailableError."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __enter__(self) -> SqliteOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteOnlineStore({self.path!r})"

    # -- connections and errors ----------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise UnavailableError(f"{self.where} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
        return conn

    def _connect(self) -> sqlite3.Connection:
        with self._errors("opening"):
            conn = sqlite3.connect(
                self.path,
                timeout=self._timeout,
                isolation_level=None,  # transactions are explicit: one per write
                # close() closes every thread's connection from its own thread.
                check_same_thread=False,
                cached_statements=_STATEMENT_CACHE,
            )
            try:
                # With WAL, NORMAL loses at most the last commits on power loss,
                # never consistency; materialization can simply run again.
                conn.execute("PRAGMA synchronous=NORMAL")
                # Checkpoint every ~40 MB of WAL rather than every 4 MB: bulk
                # writes (materialization) copy pages into the file less often.
                conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
                # A deleted entity (privacy erasure) and values overwritten
                # before it must not linger in free space of the file.
                conn.execute("PRAGMA secure_delete=ON")
            except BaseException:
                conn.close()
                raise
        with self._lock:
            if self._closed:
                conn.close()
                raise UnavailableError(f"{self.where} is closed")
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Raise sqlite3 errors inside the block as Quiver errors naming the file."""
        try:
            yield
        except (sqlite3.Error, OverflowError) as exc:
            raise self._translate(exc, action) from exc

    def _translate(self, exc: Exception, action: str) -> QuiverError:
        where = self.where
        if isinstance(exc, sqlite3.ProgrammingError) and self._closed:
            return UnavailableError(f"{where} is closed")
        if isinstance(
            exc, sqlite3.IntegrityError | sqlite3.InterfaceError | sqlite3.ProgrammingError
            | OverflowError
        ):
            # NULL timestamps, unsupported Python types, integers past 64 bits.
            return InvalidArgumentError(f"{where}: {action}: bad value: {exc}")
        # OperationalError (cannot open, locked past busy_timeout, disk I/O,
        # disk full, read-only file) and "file is not a database" alike.
        return UnavailableError(f"{where} unavailable: {action}: {exc}")

    # -- writes ----------------------------------------------------------------------

    def _ensure_columns(
        self, conn: sqlite3.Connection, plan: _WritePlan
    ) -> frozenset[str] | None:
        """Create the table or add missing bin columns; runs inside the write transaction.

        Returns the table's columns when it had to look, for the caller to cache
        once the transaction commits.
        """
        known = self._known_columns.get(plan.table)
        if known is not None and known.issuperset(plan.bins):
            return None
        conn.execute(plan.create)
        rows = conn.execute(f"PRAGMA table_info({quote(plan.table)})").fetchall()
        existing = {row[1] for row in rows}
        types = dict(zip(plan.bins, _column_types(plan.view, plan.features), strict=True))
        for bin_name in plan.bins:
            if bin_name not in existing:
                # Another writer may add it at the same time; we hold the write
                # lock (BEGIN IMMEDIATE), so the check above cannot be stale.
                conn.execute(
                    f"ALTER TABLE {quote(plan.table)} ADD COLUMN {quote(bin_name)} {types[bin_name]}"
                )
                existing.add(bin_name)
        return frozenset(existing)

    # -- reads -----------------------------------------------------------------------

    def _read_view(self, conn: sqlite3.Connection, read: ViewRead) -> ViewReadResult:
        features = tuple(read.features)
        keys = read.keys
        plan = self._read_plans.get(read.table, features)
        if not keys:
            return ViewReadResult([], {f: [] for f in features})
        action = f"reading feature view {read.table.name!r}"
        try:
            rows = self._select(conn, plan, keys)
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if message.startswith("no such table"):
                return ViewReadResult.not_found(features, len(keys))
            if not message.startswith("no such column"):
                raise self._translate(exc, action) from exc
            # Features added to the view but not written yet read as null. Not
            # cached: a writer in another process may add the column any time.
            with self._errors(action):
                rows = self._select(conn, self._partial_plan(conn, plan), keys)
        except sqlite3.Error as exc:
            raise self._translate(exc, action) from exc
        width = len(features) + 2
        if len(keys) == 1:
            aligned = [rows[0]] if rows else [(None,) * width]
        else:
            found = {row[0]: row for row in rows}
            missing = (None,) * width
            aligned = [found.get(k, missing) for k in keys]
        columns = list(zip(*aligned, strict=True))
        values = {f: list(columns[i + 2]) for i, f in enumerate(features)}
        for i in plan.bools:
            values[features[i]] = [None if v is None else bool(v) for v in columns[i + 2]]
        return ViewReadResult(list(columns[1]), values)

    def _select(
        self, conn: sqlite3.Connection, plan: _ReadPlan, keys: Sequence[bytes]
    ) -> list[tuple[Any, ...]]:
        n = len(keys)
        if n == 1:
            return conn.execute(plan.sql(1), (keys[0],)).fetchall()
        rows: list[tuple[Any, ...]] = []
        for start in range(0, n, self._max_in):
            chunk = list(keys[start : start + self._max_in])
            size = min(1 << (len(chunk) - 1).bit_length(), self._max_in)
            # Padding repeats a key already asked for: IN ignores duplicates.
            chunk.extend(repeat(chunk[0], size - len(chunk)))
            rows.extend(conn.execute(plan.sql(size), chunk).fetchall())
        return rows

    def _partial_plan(self, conn: sqlite3.Connection, plan: _ReadPlan) -> _ReadPlan:
        rows = conn.execute(f"PRAGMA table_info({quote(plan.table)})").fetchall()
        existing = {row[1] for row in rows}
        bins = tuple(b if b in existing else None for b in plan.bins)
        return _ReadPlan(
            plan.view, plan.table, plan.features, bins, plan.bools,
            _select_prefix(plan.table, bins),
        )


def _build_read_plan(table: ViewTable, features: tuple[str, ...]) -> _ReadPlan:
    view = table.view
    bins = tuple(_bin(table, f) for f in features)
    bools = tuple(
        i for i, f in enumerate(features) if feature_type(view, f) == ValueType.BOOL
    )
    name = table_name(table.project, table.name)
    return _ReadPlan(view, name, features, bins, bools, _select_prefix(name, bins))


def _select_prefix(table: str, bins: Sequence[str | None]) -> str:
    # Qualified names: SQLite reads an unknown bare "name" as a string literal
    # (its double-quoted-string quirk), which would return the bin's name as data.
    name = quote(table)
    selected = ", ".join(
        f"{name}.{quote(b)}" if b is not None else "NULL" for b in (KEY, EVENT_TS, *bins)
    )
    return f"SELECT {selected} FROM {name} WHERE {name}.{quote(KEY)} IN "


def _build_write_plan(table: ViewTable) -> _WritePlan:
    view = table.view
    features = tuple(view.feature_names)
    bins = tuple(_bin(table, f) for f in features)
    name = quote(table_name(table.project, table.name))
    types = _column_types(view, features)
    definitions = ", ".join(
        [
            f"{quote(KEY)} BLOB PRIMARY KEY NOT NULL",
            f"{quote(EVENT_TS)} INTEGER NOT NULL",
            f"{quote(CREATED_TS)} INTEGER NOT NULL",
            *(f"{quote(b)} {t}" for b, t in zip(bins, types, strict=True)),
        ]
    )
    columns = [quote(c) for c in (KEY, EVENT_TS, CREATED_TS, *bins)]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    event, created = quote(EVENT_TS), quote(CREATED_TS)
    upsert = (
        f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT ({quote(KEY)}) DO UPDATE SET {updates} "
        # The write rule of online/base.py, decided by SQLite row by row.
        f"WHERE (excluded.{event}, excluded.{created}) >= ({name}.{event}, {name}.{created})"
    )
    return _WritePlan(
        view, table_name(table.project, table.name), features, bins,
        f"CREATE TABLE IF NOT EXISTS {name} ({definitions}) WITHOUT ROWID", upsert,
    )


def _bin(table: ViewTable, feature: str) -> str:
    bin_name = storage_name(table, feature)
    if bin_name in _RESERVED:
        raise FailedPreconditionError(
            f"feature view {table.name!r}: storage name {bin_name!r} of feature {feature!r} "
            f"is reserved by the SQLite store"
        )
    return bin_name


def _column_types(view: FeatureView, features: Sequence[str]) -> list[str]:
    return [_SQL_TYPES[view.feature(f).dtype] for f in features]
