"""`TrainingClient`: point-in-time-correct training sets over Arrow Flight.

One call uploads the spine (the labelled events) with ``do_put``, plans the
training set with ``get_flight_info`` and fetches its partitions with
``do_get``, several at a time, from whichever replica each endpoint names.

Errors come back as `quiver.errors` classes: the server sends a serialized
google.rpc.Status in every Flight error, and its code and details (reason,
field violations) are decoded here without any dependency beyond protobuf.
"""

from __future__ import annotations

import contextvars
import getpass
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import flight

from quiver._credentials import Tls, Token, bearer
from quiver.convert import DEFAULT_TIMESTAMP_COLUMN, pack
from quiver.errors import InvalidArgumentError, QuiverError
from quiver.flight.v1 import flight_pb2 as pb
from quiver.prefetch import Prefetch
from quiver.registry.v1 import governance_pb2 as gpb
from quiver.status import flight_error_code, from_flight_error

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

logger = logging.getLogger(__name__)

# Below this many rows per partition, more partitions cost more than they win
# (each one re-encodes its keys and re-reads its spine rows).
_MIN_AUTO_PARTITION_ROWS = 500_000
_UPLOAD_BATCH_ROWS = 65_536
_QUEUED_BATCHES = 4

T = TypeVar("T")


@dataclass(frozen=True)
class SpineHandle:
    """A spine uploaded to the server, reusable for several training sets until it expires."""

    spine_id: str
    rows: int
    expires_at: datetime | None


@dataclass(frozen=True)
class TrainingDataset:
    """One version of a stored training dataset and its rows.

    Attributes:
        name: Dataset name.
        version: Version number (1, 2, ...).
        table: The rows: the spine's columns, then the features.
        record: What the server recorded (registry version, feature refs,
            history files, spine fingerprint, who and when).
    """

    name: str
    version: int
    table: pa.Table
    record: gpb.TrainingDataset


@dataclass(frozen=True)
class DatasetSpine:
    """The spine kept by a stored training dataset, reused for a new training set.

    Args:
        name: Training dataset name.
        version: Its version; 0 means the newest.
    """

    name: str
    version: int = 0


@dataclass(frozen=True)
class OfflineSpine:
    """A Parquet spine already on the server, read by the server itself (no upload).

    Args:
        path: File or directory relative to the server's spine directory
            (``flight.spine_root``, by default ``spines/`` under the offline
            store root). Paths that leave it (``..``, symbolic links out of it)
            or reach feature history are refused with InvalidArgumentError.
            Tickets planned over it expire like those of an uploaded spine.
    """

    path: str


class TrainingClient:
    """A connection to a Quiver Flight server.

    Args:
        location: ``"grpc://host:port"`` (or ``grpc+tls://`` for TLS) of the server.
        max_workers: Partitions fetched at once.
        tls: Your own CA, a client certificate (mutual TLS) or another server
            name for a ``grpc+tls://`` location; the system's CAs by default.
        token: Bearer token sent as the ``authorization`` header on every call,
            or a function returning the current one (see `token_file`).
        timeout: Deadline of each call in seconds (for ``do_get``, the whole
            stream); None waits as long as it takes.
        headers: Extra headers sent with every call.
        tracing: Trace every call with OpenTelemetry (W3C ``traceparent`` in
            Flight headers); True uses the global tracer provider. Needs
            ``opentelemetry-api`` (the ``tracing`` extra of this package).

    Example::

        with TrainingClient("grpc://localhost:8815") as client:
            table = client.get_training_set(spine, feature_service="fraud_model_v1")
    """

    def __init__(
        self,
        location: str,
        *,
        max_workers: int = 4,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        tracing: bool | TracerProvider = False,
        tls: Tls | None = None,
        token: Token | None = None,
    ) -> None:
        if max_workers < 1:
            raise InvalidArgumentError.for_field("max_workers", "must be at least 1")
        if tls is not None and not location.startswith("grpc+tls://"):
            raise InvalidArgumentError.for_field(
                "location", f"{location!r}: TLS settings need a grpc+tls:// location"
            )
        self._tls: dict[str, Any] = {}
        if tls is not None:
            root, cert, key = tls.read()
            self._tls = {"tls_root_certs": root, "cert_chain": cert, "private_key": key,
                         "override_hostname": tls.server_name}
        self.location = location
        self.max_workers = max_workers
        self._middleware: list[flight.ClientMiddlewareFactory] = []
        if tracing is not False:
            # Imported only now: the client does not depend on OpenTelemetry.
            from quiver._tracing import TracingClientMiddlewareFactory

            provider = None if tracing is True else tracing
            self._middleware.append(TracingClientMiddlewareFactory(location, provider))
        self._timeout = timeout
        self._headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self._token = token
        self._clients: dict[str, flight.FlightClient] = {}
        self._lock = threading.Lock()
        self._client = self._connect(location)

    @property
    def _options(self) -> flight.FlightCallOptions:
        headers = self._headers
        if self._token is not None:
            headers = [*headers, (b"authorization", bearer(self._token).encode())]
        return flight.FlightCallOptions(timeout=self._timeout, headers=headers)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> TrainingClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def upload_spine(
        self, spine: Any, *, timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN
    ) -> SpineHandle:
        """Upload a spine once to build several training sets from it.

        Args:
            spine: A pyarrow Table or RecordBatchReader, a pandas DataFrame, or
                the path of a local Parquet file or directory.
            timestamp_column: Its event-time column, checked before the upload.

        Raises:
            InvalidArgumentError: no such column, or naive timestamps.
            ResourceExhaustedError: more rows or bytes than the server accepts, its
                spine storage is full, or it runs as many uploads as it allows.
        """
        schema, batches = _spine_batches(spine)
        command = pb.UploadSpineCommand(timestamp_column=timestamp_column)
        descriptor = flight.FlightDescriptor.for_command(pack(command))

        def upload() -> bytes:
            writer, metadata = self._client.do_put(descriptor, schema, self._options)
            try:
                for batch in batches:
                    writer.write_batch(batch)
                writer.done_writing()
                answer = metadata.read()
            finally:
                writer.close()
            if answer is None:
                raise QuiverError("the server answered the upload without a spine id")
            return bytes(answer.to_pybytes())

        result = pb.UploadSpineResult()
        result.ParseFromString(_call(upload))
        expires = (
            result.expires_at.ToDatetime(tzinfo=UTC) if result.HasField("expires_at") else None
        )
        logger.debug("uploaded spine %s (%d rows)", result.spine_id, result.rows)
        return SpineHandle(result.spine_id, result.rows, expires)

    def plan(
        self,
        spine: Any,
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        full_feature_names: bool = False,
        timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
        partition_rows: int | None = None,
        fit: bool = False,
        transform_version: int = 0,
        name: str = "",
    ) -> flight.FlightInfo:
        """Upload the spine if needed and plan the training set (``get_flight_info``).

        The result's endpoints are partitions of the spine, in order; their
        tickets can be fetched from any replica, any number of times.
        Arguments are those of `get_training_set`.
        """
        command = self._command(features, feature_service, full_feature_names, timestamp_column)
        command.transform_version = transform_version
        if fit:
            command.fit = True
            command.requested_by = _user_name()
        command.name = name
        rows = 0
        if isinstance(spine, OfflineSpine):
            command.spine.parquet_path = spine.path
        elif isinstance(spine, DatasetSpine):
            command.spine.training_dataset.name = spine.name
            command.spine.training_dataset.version = spine.version
        else:
            handle = spine if isinstance(spine, SpineHandle) else self.upload_spine(
                spine, timestamp_column=timestamp_column
            )
            command.spine.spine_id = handle.spine_id
            rows = handle.rows
        if partition_rows is None and rows:
            partition_rows = max(math.ceil(rows / self.max_workers), _MIN_AUTO_PARTITION_ROWS)
        command.partition_rows = partition_rows or 0
        descriptor = flight.FlightDescriptor.for_command(pack(command))
        return _call(lambda: self._client.get_flight_info(descriptor, self._options))

    def get_training_set(
        self,
        spine: Any,
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        full_feature_names: bool = False,
        timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
        partition_rows: int | None = None,
        fit: bool = False,
        transform_version: int = 0,
        name: str = "",
        progress: Callable[[TrainingProgress], None] | None = None,
    ) -> pa.Table:
        """The spine joined point-in-time with the features, as one Arrow table.

        Each spine row gets, per feature view, the latest feature row of its
        join keys at or before its timestamp (within the view's ttl); nulls
        when there is none. Rows come back in spine order, spine columns
        unchanged, followed by one column per feature.

        Args:
            spine: A pyarrow Table or RecordBatchReader, a pandas DataFrame, the
                path of a local Parquet file or directory (all uploaded), a
                `SpineHandle` from `upload_spine`, an `OfflineSpine`, or a
                `DatasetSpine` (the spine a training dataset kept). Its
                timestamp column must be timezone-aware (naive times are refused).
            features: Feature references, ``"view:feature"``.
            feature_service: Or the name of a feature service.
            full_feature_names: Name columns ``"view__feature"``.
            timestamp_column: The spine's event-time column.
            partition_rows: Spine rows per partition; by default the spine is
                split so that `max_workers` partitions are fetched at once.
            fit: Fit the feature service's transforms on this training set
                first, store the parameters in the registry as a new version,
                and apply them (the schema metadata
                ``quiver.transform_version`` names the version).
            transform_version: Apply this parameter set version of the
                service's transforms; 0 applies the current one.
            name: Optional name the server stores the training set's feature
                profile under (the reference for `quiver monitor --reference
                training_set:NAME`); default: the training set's fingerprint.
            progress: Called after each record batch arrives with the rows
                received so far and the total (see `TrainingProgress`); nothing
                is reported by default. For a bar: ``bar = tqdm(unit="rows")``
                and ``progress=lambda p: bar.update(p.rows - bar.n)``.

        Raises:
            InvalidArgumentError: a spine that does not fit the features (a
                missing join key or timestamp column, a wrong type, naive
                timestamps) or a bad selection; `violations` names the field.
            NotFoundError: unknown feature view, feature, feature service or spine.
            ResourceExhaustedError: a spine over the server's row limit.
            FailedPreconditionError: no registry applied, a feature view's
                history is missing or malformed, or the service's transforms
                were never fitted (pass ``fit=True``).
            ResourceExhaustedError: a spine over the server's limits, or the server
                already serves as many streams or uploads as it allows.
            FailedPreconditionError: no registry applied, or a feature view's
                history is missing or malformed.
            UnavailableError: the server cannot be reached.
        """
        info = self.plan(
            spine, features=features, feature_service=feature_service,
            full_feature_names=full_feature_names, timestamp_column=timestamp_column,
            partition_rows=partition_rows, fit=fit, transform_version=transform_version,
            name=name,
        )
        return self.fetch(info, progress=progress)

    def get_training_set_reader(
        self,
        spine: Any,
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        full_feature_names: bool = False,
        timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
        partition_rows: int | None = None,
        fit: bool = False,
        transform_version: int = 0,
        name: str = "",
        progress: Callable[[TrainingProgress], None] | None = None,
    ) -> pa.RecordBatchReader:
        """Like `get_training_set`, but streamed: batches in spine order as they arrive.

        Up to `max_workers` partitions are fetched ahead, each a few batches
        deep, so memory stays bounded however large the training set is.
        """
        info = self.plan(
            spine, features=features, feature_service=feature_service,
            full_feature_names=full_feature_names, timestamp_column=timestamp_column,
            partition_rows=partition_rows, fit=fit, transform_version=transform_version,
            name=name,
        )
        return self.fetch_reader(info, progress=progress)

    def fetch(
        self,
        info: flight.FlightInfo,
        *,
        progress: Callable[[TrainingProgress], None] | None = None,
    ) -> pa.Table:
        """Every endpoint of a planned training set, fetched in parallel, as one table."""
        endpoints = list(info.endpoints)
        counter = _Counter(info, progress)
        if len(endpoints) == 1:
            return self._read_endpoint(endpoints[0], counter)
        with ThreadPoolExecutor(min(self.max_workers, len(endpoints))) as pool:
            # Each fetch runs in a copy of the caller's context, so tracing
            # (and anything else kept in context variables) follows it.
            futures = [
                pool.submit(contextvars.copy_context().run, self._read_endpoint, endpoint, counter)
                for endpoint in endpoints
            ]
            tables = [future.result() for future in futures]
        return pa.concat_tables(tables) if tables else info.schema.empty_table()

    def fetch_reader(
        self,
        info: flight.FlightInfo,
        *,
        progress: Callable[[TrainingProgress], None] | None = None,
    ) -> pa.RecordBatchReader:
        """Every endpoint of a planned training set, streamed in order."""
        # Partitions are fetched in this call's context (its trace), wherever and
        # whenever the reader is read: later, or on a thread of pyarrow's own.
        context = contextvars.copy_context()
        return pa.RecordBatchReader.from_batches(
            info.schema, self._stream(list(info.endpoints), _Counter(info, progress), context)
        )

    def get_schema(
        self,
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        full_feature_names: bool = False,
        timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
    ) -> pa.Schema:
        """The columns a spine needs (join keys, timestamp) followed by the features."""
        command = self._command(features, feature_service, full_feature_names, timestamp_column)
        descriptor = flight.FlightDescriptor.for_command(pack(command))
        result = _call(lambda: self._client.get_schema(descriptor, self._options))
        return result.schema

    def list_feature_sets(self, name_prefix: str = "") -> list[tuple[pb.FeatureSetInfo, pa.Schema]]:
        """Every feature service and feature view the server offers, with its schema."""
        criteria = pb.ListFlightsCriteria(name_prefix=name_prefix).SerializeToString()
        infos = _call(lambda: list(self._client.list_flights(criteria, self._options)))
        result = []
        for info in infos:
            described = pb.FeatureSetInfo()
            described.ParseFromString(info.app_metadata)
            result.append((described, info.schema))
        return result

    def create_training_dataset(
        self,
        name: str,
        spine: Any,
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        full_feature_names: bool = False,
        timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        partition_rows: int | None = None,
    ) -> TrainingDataset:
        """Build a training set and record it as the next version of dataset `name`.

        The server keeps a copy of the spine and pins the registry version,
        the features and each view's history files, so `get_training_dataset`
        pulls exactly the same rows again later. Arguments are those of
        `get_training_set`, plus:

        Args:
            name: Dataset name (letters, digits, ``_``, ``-``, ``.``); each
                call adds a version.
            description: Free text for people.
            tags: Free-form labels.

        Returns:
            The new version, with its rows.
        """
        command = pb.CreateTrainingDatasetCommand(
            name=name, description=description, tags=dict(tags or {}),
            training_set=self._command(features, feature_service, full_feature_names,
                                       timestamp_column),
        )
        if isinstance(spine, OfflineSpine):
            command.training_set.spine.parquet_path = spine.path
        else:
            handle = spine if isinstance(spine, SpineHandle) else self.upload_spine(
                spine, timestamp_column=timestamp_column
            )
            command.training_set.spine.spine_id = handle.spine_id
        command.training_set.partition_rows = partition_rows or 0
        return self._dataset(command)

    def get_training_dataset(
        self, name: str, version: int = 0, *, partition_rows: int | None = None
    ) -> TrainingDataset:
        """Pull a stored training dataset again: the same rows, cell for cell.

        Args:
            name: Dataset name.
            version: Its version; 0 means the newest.
            partition_rows: Spine rows per partition (default: the server's).

        Raises:
            NotFoundError: no such dataset or version.
            FailedPreconditionError: it can no longer be reproduced (a history
                file it read was rewritten by an erasure or merged by a
                compaction, or an erasure removed rows of its spine); the
                message names what changed.
        """
        command = pb.TrainingDatasetCommand(
            name=name, version=version, partition_rows=partition_rows or 0
        )
        return self._dataset(command)

    def _dataset(
        self, command: pb.CreateTrainingDatasetCommand | pb.TrainingDatasetCommand
    ) -> TrainingDataset:
        descriptor = flight.FlightDescriptor.for_command(pack(command))
        info = _call(lambda: self._client.get_flight_info(descriptor, self._options))
        described = gpb.TrainingDatasetInfo()
        described.ParseFromString(info.app_metadata)
        return TrainingDataset(
            name=described.dataset.name, version=described.dataset.version,
            table=self.fetch(info), record=described.dataset,
        )

    def _command(
        self,
        features: Sequence[str] | None,
        feature_service: str | None,
        full_feature_names: bool,
        timestamp_column: str,
    ) -> pb.TrainingSetCommand:
        if (features is None) == (feature_service is None):
            raise InvalidArgumentError.for_field(
                "features", "pass either features=[...] or feature_service=..."
            )
        if isinstance(features, str):
            raise InvalidArgumentError.for_field(
                "features", "must be a list of 'view:feature' references, not a string"
            )
        command = pb.TrainingSetCommand(
            full_feature_names=full_feature_names, timestamp_column=timestamp_column
        )
        if feature_service is not None:
            command.feature_service = feature_service
        else:
            command.features.refs.extend(features or ())
        return command

    def _connect(self, location: str) -> flight.FlightClient:
        with self._lock:
            client = self._clients.get(location)
            if client is None:
                client = flight.FlightClient(
                    location, middleware=self._middleware or None,
                    **(self._tls if location.startswith("grpc+tls://") else {}),
                )
                self._clients[location] = client
            return client

    def _client_for(self, endpoint: flight.FlightEndpoint) -> flight.FlightClient:
        for location in endpoint.locations:
            uri = location.uri.decode() if isinstance(location.uri, bytes) else str(location.uri)
            if not uri.startswith("arrow-flight-reuse-connection:"):
                return self._connect(uri)
        return self._client

    def _read_endpoint(self, endpoint: flight.FlightEndpoint, counter: _Counter) -> pa.Table:
        client = self._client_for(endpoint)
        reader = _call(lambda: client.do_get(endpoint.ticket, self._options))
        if counter.progress is None:
            return _call(reader.read_all)
        batches: list[pa.RecordBatch] = []
        while True:
            try:
                chunk = _call(reader.read_chunk)
            except StopIteration:
                return pa.Table.from_batches(batches, schema=reader.schema)
            counter.add(chunk.data)
            batches.append(chunk.data)

    def _batches(self, endpoint: flight.FlightEndpoint) -> Iterator[pa.RecordBatch]:
        """One endpoint's record batches, as they arrive; cancelled if left unread."""
        client = self._client_for(endpoint)
        reader = _call(lambda: client.do_get(endpoint.ticket, self._options))
        finished = False
        try:
            while True:
                try:
                    chunk = _call(reader.read_chunk)
                except StopIteration:
                    finished = True
                    return
                yield chunk.data
        finally:
            if not finished:
                reader.cancel()

    def _stream(
        self, endpoints: list[flight.FlightEndpoint], counter: _Counter,
        context: contextvars.Context,
    ) -> Iterator[pa.RecordBatch]:
        """Endpoints in order, up to `max_workers` of them fetched ahead at once, each
        on a thread running in a copy of `context`."""
        ahead: deque[Prefetch[pa.RecordBatch]] = deque()

        def start(index: int) -> None:
            if index < len(endpoints):
                # Prefetch copies the context it is made in for its thread.
                ahead.append(context.copy().run(
                    Prefetch, self._batches(endpoints[index]), _QUEUED_BATCHES,
                    on_item=counter.add, name=f"quiver-fetch-{index}",
                ))

        for index in range(min(self.max_workers, len(endpoints))):
            start(index)
        try:
            for index in range(len(endpoints)):
                yield from ahead[0]
                ahead.popleft()
                start(index + self.max_workers)
        finally:
            for prefetch in ahead:
                prefetch.close()


@dataclass(frozen=True)
class TrainingProgress:
    """How much of a training set has arrived.

    Attributes:
        rows: Rows received so far.
        total_rows: Rows the whole training set has (from the plan); None if unknown.
        batches: Record batches received so far.
    """

    rows: int
    total_rows: int | None
    batches: int


class _Counter:
    """Rows received for one pull, reported to its progress callback (any thread)."""

    def __init__(self, info: flight.FlightInfo, progress: Callable[[TrainingProgress], None] | None
                 ) -> None:
        self.progress = progress
        self.total = info.total_records if info.total_records >= 0 else None
        self.rows = self.batches = 0
        self._lock = threading.Lock()

    def add(self, batch: pa.RecordBatch) -> None:
        if self.progress is None:
            return
        with self._lock:
            self.rows += batch.num_rows
            self.batches += 1
            self.progress(TrainingProgress(self.rows, self.total, self.batches))


def _spine_batches(spine: Any) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """A spine as a schema and record batches to upload."""
    if isinstance(spine, pa.Table):
        return spine.schema, iter(spine.to_batches(max_chunksize=_UPLOAD_BATCH_ROWS))
    if isinstance(spine, pa.RecordBatchReader):
        return spine.schema, iter(spine)
    if isinstance(spine, pa.RecordBatch):
        return spine.schema, iter([spine])
    if type(spine).__module__.startswith("pandas") and hasattr(spine, "columns"):
        table = pa.Table.from_pandas(spine, preserve_index=False)
        return table.schema, iter(table.to_batches(max_chunksize=_UPLOAD_BATCH_ROWS))
    if isinstance(spine, str | os.PathLike):
        return _parquet_batches(os.fspath(spine))
    raise InvalidArgumentError.for_field(
        "spine",
        "pass a pyarrow Table or RecordBatchReader, a pandas DataFrame, a Parquet path, a "
        f"SpineHandle or an OfflineSpine, not {type(spine).__name__}",
    )


def _parquet_batches(path: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """A local Parquet file, or the files under a directory in path order, as batches."""
    if os.path.isdir(path):
        files: list[str] = []
        for directory, dirs, names in os.walk(path):
            # Like pyarrow datasets: names starting with "." or "_" are not data.
            dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
            files.extend(os.path.join(directory, n) for n in names if not n.startswith((".", "_")))
        files.sort()
    elif os.path.isfile(path):
        files = [path]
    else:
        raise InvalidArgumentError.for_field("spine", f"no Parquet file or directory at {path!r}")
    if not files:
        raise InvalidArgumentError.for_field("spine", f"no Parquet files under {path!r}")
    schema = pq.read_schema(files[0])

    def batches() -> Iterator[pa.RecordBatch]:
        for file in files:
            yield from pq.ParquetFile(file).iter_batches(batch_size=_UPLOAD_BATCH_ROWS)

    return schema, batches()


def _user_name() -> str:
    """Who asks for a fit, recorded with the parameters (the OS user name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _call(func: Callable[[], T]) -> T:
    """Run a Flight call, turning its failure into a `quiver.errors` class."""
    try:
        return func()
    except (flight.FlightError, pa.ArrowException) as exc:
        raise from_flight_error(exc) from None
    except OSError as exc:
        # A refused call whose status pyarrow reduced to an OSError; a local I/O
        # error (reading a spine file) is re-raised as it is.
        if flight_error_code(exc) is grpc.StatusCode.UNKNOWN:
            raise
        raise from_flight_error(exc) from None


