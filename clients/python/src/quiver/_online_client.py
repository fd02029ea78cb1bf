"""`OnlineClient`: online feature lookups over gRPC."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

import grpc
import pyarrow as pa

from quiver._credentials import Tls, Token, bearer
from quiver._online_response import OnlineResponse, as_list
from quiver.convert import encode_columns, push_target_to_proto
from quiver.errors import InvalidArgumentError
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.serving.v1 import serving_service_pb2_grpc as pb_grpc
from quiver.status import from_rpc_error
from quiver.types import ErasureResult, PushResult, PushTarget

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

logger = logging.getLogger(__name__)

def _as_table(rows: Any) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, Mapping):
        return pa.table({name: _as_array(values) for name, values in rows.items()})
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        return pa.Table.from_pandas(rows, preserve_index=False)
    raise InvalidArgumentError.for_field(
        "rows", f"pass columns, a pyarrow Table or a pandas DataFrame, not {type(rows).__name__}"
    )


def _as_array(values: Any) -> pa.Array:
    return values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def push_messages(table: pa.Table, max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """`table` as Arrow IPC streams of at most `max_bytes` each, with their row counts.

    Slices are cut by the average row size and halved while one is still too
    large (rows of very different sizes), so every message fits.

    Raises:
        InvalidArgumentError: one row alone does not fit in `max_bytes`.
    """
    whole = _ipc(table)
    if len(whole) <= max_bytes or table.num_rows == 0:
        yield table.num_rows, whole
        return
    per_row = max(1, len(whole) // table.num_rows)
    step = max(1, (max_bytes * 9 // 10) // per_row)
    offset = 0
    while offset < table.num_rows:
        part = table.slice(offset, step)
        data = _ipc(part)
        if len(data) > max_bytes:
            if part.num_rows == 1:
                raise InvalidArgumentError.for_field(
                    "rows",
                    f"row {offset} alone takes {len(data)} bytes as Arrow IPC; one push message "
                    f"holds at most {max_bytes} bytes (the server's gRPC message limit)",
                )
            step = max(1, part.num_rows // 2)
            continue
        yield part.num_rows, data
        offset += part.num_rows


DEFAULT_TIMEOUT_SECONDS = 5.0
# gRPC servers accept messages up to 4 MiB by default; the server keeps that
# limit. Pushes are sent in messages this large at most (room left for the
# request's other fields).
DEFAULT_MAX_PUSH_BYTES = 4 * 1024 * 1024 - 64 * 1024


class OnlineClient:
    """A connection to a Quiver serving server.

    Args:
        target: ``"host:port"`` of the server.
        timeout: Default deadline of each call, in seconds.
        tls: True for TLS with the system's CAs, a `Tls` for your own CA, a
            client certificate (mutual TLS) or another server name; plaintext
            when False.
        token: Bearer token sent as ``authorization`` metadata on every call,
            or a function returning the current token (see `token_file`).
        credentials: gRPC channel credentials, instead of `tls`.
        options: Extra gRPC channel options.
        interceptors: Client interceptors.
        max_push_bytes: Largest PushFeatures message sent; larger pushes are
            split (see `push`). The server accepts 4 MiB, gRPC's default.
        tracing: Trace every call with OpenTelemetry: a client span per call whose
            context travels to the server as W3C ``traceparent`` metadata, so the
            server's spans join the caller's trace. True uses the globally
            configured tracer provider; pass a ``TracerProvider`` to use that one.
            Needs ``opentelemetry-api`` (the ``tracing`` extra:
            ``pip install 'quiver-client[tracing]'``); ImportError says so when it
            is missing. Off by default.

    Example::

        with OnlineClient("localhost:6566") as client:
            rows = client.get_online_features(
                features=["user_stats:txn_count_7d"], entities={"user_id": [1, 2]}
            ).to_dict()
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        tls: bool | Tls = False,
        token: Token | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
        tracing: bool | TracerProvider = False,
        max_push_bytes: int = DEFAULT_MAX_PUSH_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._token = token
        if tls is not False:
            if credentials is not None:
                raise InvalidArgumentError.for_field("tls", "pass tls or credentials, not both")
            settings = Tls() if tls is True else tls
            root, cert, key = settings.read()
            credentials = grpc.ssl_channel_credentials(root, key, cert)
            if settings.server_name:
                options = [*options, ("grpc.ssl_target_name_override", settings.server_name)]
        self.max_push_bytes = max_push_bytes
        channel = (
            grpc.secure_channel(target, credentials, options=list(options))
            if credentials is not None
            else grpc.insecure_channel(target, options=list(options))
        )
        if tracing is not False:
            # Imported only now: the client does not depend on OpenTelemetry.
            from quiver._tracing import client_interceptor

            interceptors = [client_interceptor(target, tracing), *interceptors]
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self._channel = channel
        self._stub = pb_grpc.FeatureServingServiceStub(channel)

    def get_online_features(
        self,
        *,
        entities: Mapping[str, Sequence[Any]],
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        full_feature_names: bool = False,
        request_data: Mapping[str, Sequence[Any]] | None = None,
        transform_version: int = 0,
        timeout: float | None = None,
    ) -> OnlineResponse:
        """Fetch the latest feature values for the given entities.

        Args:
            entities: Join key name to a column of key values, all the same length.
            features: Feature references, ``"view:feature"`` (on-demand views' too).
            feature_service: Or the name of a feature service.
            full_feature_names: Name columns ``"view__feature"``.
            request_data: Values the requested on-demand views read, by request
                field, one per entity (e.g. ``{"amount": [12.5, 80.0]}``).
            transform_version: Parameter set version of the feature service's
                transforms; 0 applies the current one. The response's
                `transform_version` says which one was applied.
            timeout: Deadline in seconds; the client default when None.

        Raises:
            InvalidArgumentError: bad selection, entity columns or request data
                (`violations` says where), or an on-demand function or custom
                transform that failed on this request (named in `metadata`).
            NotFoundError: unknown feature view, feature, feature service or
                transform version.
            FailedPreconditionError: the service's transforms were never fitted.
            UnavailableError: the server or its online store cannot be reached.
            DeadlineExceededError: no answer within the deadline.
        """
        if (features is None) == (feature_service is None):
            raise InvalidArgumentError.for_field(
                "features", "pass either features=[...] or feature_service=..."
            )
        if isinstance(features, str):
            raise InvalidArgumentError.for_field(
                "features", "must be a list of 'view:feature' references, not a string"
            )
        try:
            columns = encode_columns(entities)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError.for_field("entities", str(exc)) from None
        try:
            request_columns = encode_columns(request_data or {})
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError.for_field("request_data", str(exc)) from None
        request = pb.GetOnlineFeaturesRequest(
            entities=columns, full_feature_names=full_feature_names, request_data=request_columns,
            transform_version=transform_version,
        )
        if feature_service is not None:
            request.feature_service = feature_service
        else:
            request.features.refs.extend(features or ())
        try:
            response = self._stub.GetOnlineFeatures(
                request, timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return OnlineResponse(response, {k: as_list(v) for k, v in entities.items()})

    def push(
        self,
        feature_view: str,
        rows: Mapping[str, Sequence[Any]] | pa.Table | Any,
        *,
        to: PushTarget | str = PushTarget.ONLINE,
        timeout: float | None = None,
    ) -> PushResult:
        """Write rows of one feature view to the online store, offline history, or both.

        A push larger than one gRPC message (4 MiB on the server) is sent as
        several PushFeatures calls of whole rows each, and their counts are
        summed. Each message is checked and written on its own: if one is
        refused, the rows of the messages before it stay written (the error's
        ``metadata["rows_written"]`` says how many); pushing the same rows
        again is safe, since an online row is only replaced by a newer one.

        Args:
            feature_view: The view's name.
            rows: Columns (name -> values), a pyarrow Table or a pandas DataFrame,
                holding every join key, every feature and the event timestamp
                column (named after the view's source timestamp field). Naive
                timestamps are read as UTC.
            to: A `PushTarget` or its value: ``"online"``, ``"offline"`` or
                ``"online_and_offline"``.
            timeout: Deadline in seconds of each message; the client default when None.

        Raises:
            InvalidArgumentError: missing or extra columns, wrong types, null
                timestamps or timestamps ahead of the server's clock; nothing of
                that message is written.
            NotFoundError: unknown feature view.
        """
        try:
            target = push_target_to_proto(PushTarget(to))
        except ValueError:
            allowed = ", ".join(t.value for t in PushTarget)
            raise InvalidArgumentError.for_field(
                "to", f"{to!r} is not a push target; allowed: {allowed}"
            ) from None
        table = _as_table(rows)
        written = superseded = 0
        for _, data in push_messages(table, self.max_push_bytes):
            request = pb.PushFeaturesRequest(feature_view=feature_view, arrow_ipc=data, to=target)
            try:
                reply = self._stub.PushFeatures(
                    request, timeout=self.timeout if timeout is None else timeout,
                    metadata=self._metadata(),
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if written:
                    error.metadata["rows_written"] = str(written)
                    error.message += (
                        f" (the first {written} rows of this push were written by earlier messages)"
                    )
                    error.args = (error.message,)
                raise error from None
            written += int(reply.rows)
            superseded += reply.rows_superseded
        return PushResult(rows=written, superseded=superseded)

    @overload
    def delete_entities(
        self, entities: Mapping[str, Sequence[Any]], feature_views: Sequence[str] = (), *,
        offline: Literal[False] = False, timeout: float | None = None,
    ) -> int: ...

    @overload
    def delete_entities(
        self, entities: Mapping[str, Sequence[Any]], feature_views: Sequence[str] = (), *,
        offline: Literal[True], timeout: float | None = None,
    ) -> ErasureResult: ...

    def delete_entities(
        self,
        entities: Mapping[str, Sequence[Any]],
        feature_views: Sequence[str] = (),
        *,
        offline: bool = False,
        timeout: float | None = None,
    ) -> int | ErasureResult:
        """Remove entities' online rows (all views keyed by them unless `feature_views`).

        Args:
            entities: Join key name to key values, one value per entity.
            feature_views: Views to delete from; default every view keyed by them.
            offline: Also erase them from the offline history (privacy
                requests): training sets planned from now on leave them out,
                the history files holding them are rewritten, and the erasure
                is logged without the erased values. Give a generous
                `timeout`: the call returns once the files are rewritten.
            timeout: Deadline in seconds (default: the client's).

        Returns:
            The number of online rows removed, or with `offline` an `ErasureResult`.
        """
        try:
            columns = encode_columns(entities)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError.for_field("entities", str(exc)) from None
        request = pb.DeleteEntitiesRequest(
            entities=columns, feature_views=list(feature_views), offline=offline
        )
        try:
            reply = self._stub.DeleteEntities(
                request, timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        if not offline:
            return int(reply.rows_deleted)
        return ErasureResult(
            erasure_id=reply.erasure_id,
            feature_views=list(reply.feature_views),
            online_rows_deleted=int(reply.rows_deleted),
            offline_rows_deleted=int(reply.offline_rows_deleted),
            files_rewritten=int(reply.offline_files_rewritten),
            datasets_affected=list(reply.datasets_affected),
        )

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return None if self._token is None else (("authorization", bearer(self._token)),)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> OnlineClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
