"""The Arrow Flight server that streams training sets.

`create_flight_server` builds a started server and returns it with its port
(tests ask for port 0); `serve` runs one until SIGTERM or SIGINT, then stops
accepting calls and drains the ones in flight for `flight.grace_seconds`.

Calls (commands and tickets are described in `quiver/flight/v1/flight.proto`):

- ``do_put`` (UploadSpineCommand): store a spine; answers an UploadSpineResult.
- ``get_flight_info`` (TrainingSetCommand): plan a training set into endpoints.
- ``do_get`` (TrainingSetTicket): stream one partition as it is computed.
- ``get_schema`` (TrainingSetCommand): the schema, without planning.
- ``list_flights`` (ListFlightsCriteria): every feature service and view.
- ``do_action``, ``do_exchange``: not offered (UNIMPLEMENTED).

Every failure carries a google.rpc.Status, never a traceback or a server path
(`quiver_flight.errors`); a bad request never takes the server down. Streams
and uploads are bounded in number (`quiver_flight.limits`), expired spines are
swept on a timer, and readiness is served on grpc.health.v1 on a side port
(`quiver_flight.health`).

With `auth.enabled` every call is authenticated from its ``authorization``
header before its handler runs (`quiver_flight.auth`) and each call checks
the registry's permissions on what it resolved: READ_OFFLINE for training
sets, schemas, tickets and spine uploads, DESCRIBE for list_flights. With
`flight.tls` the server speaks TLS and follows certificate rotation
(`quiver_flight.tls`).
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Concatenate, ParamSpec, TypeVar, cast
from urllib.parse import urlparse

import pyarrow as pa
import structlog
from pyarrow import flight

from quiver import Action
from quiver.convert import pack
from quiver.errors import DefinitionError, InvalidArgumentError, UnimplementedError
from quiver.flight.v1 import flight_pb2 as pb
from quiver.prefetch import Prefetch
from quiver_flight.auth import MIDDLEWARE_KEY as AUTH_MIDDLEWARE_KEY
from quiver_flight.auth import AuthMiddlewareFactory, with_call_access
from quiver_flight.convert import timestamp_seconds, unpack_command
from quiver_flight.engines.factory import training_engine
from quiver_flight.engines.staged import StagingArea
from quiver_flight.errors import ErrorPolicy
from quiver_flight.health import FlightHealth
from quiver_flight.limits import CallSlots
from quiver_flight.periodic import Periodic
from quiver_flight.pit import check_timestamp_column
from quiver_flight.spine_paths import SpineDirectory
from quiver_flight.spines import SPINE_DIRECTORY, SpineStore
from quiver_flight.tickets import TicketSigner
from quiver_flight.tls import FlightServerHandle
from quiver_flight.training import TrainingSets
from quiver_server.auth.access import AccessControl
from quiver_server.auth.authenticator import build_authenticator
from quiver_server.auth.tls import KeyPair, ReloadingKeyPair, tls_paths
from quiver_server.auth.warnings import warn_if_open
from quiver_server.config import QuiverConfig
from quiver_server.echo import clip
from quiver_server.governance.erasure import PendingErasures
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.who import call_principal
from quiver_server.monitoring.storage import ProfileStore
from quiver_server.monitoring.training_sets import TrainingSetProfiler
from quiver_server.observability import configure_logging
from quiver_server.offline.source import resolve_path
from quiver_server.registry.store import RegistryStore
from quiver_server.telemetry import Telemetry, setup_telemetry
from quiver_server.telemetry.flight_middleware import flight_call, flight_call_counter
from quiver_server.transforms.engine import Transformations

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Batches computed ahead of the one being sent, so the join of the next batch
# overlaps the serialization and sending of this one.
_PREFETCH_BATCHES = 2
_SWITCH_INTERVAL_SECONDS = 0.001


Translate = Callable[
    ["TrainingSetFlightServer", BaseException, str, flight.ServerCallContext], BaseException
]
Handler = Callable[Concatenate["TrainingSetFlightServer", flight.ServerCallContext, P], R]


def _edge(handler: Handler[P, R], translate: Translate) -> Handler[P, R]:
    """The edge of a Flight handler: the call's telemetry is current while it runs,
    and what it raises leaves as `translate` makes it (a google.rpc.Status inside)."""

    @functools.wraps(handler)
    def wrapper(
        self: TrainingSetFlightServer, context: flight.ServerCallContext,
        *args: P.args, **kwargs: P.kwargs,
    ) -> R:
        with flight_call(context) as call:
            try:
                result = handler(self, context, *args, **kwargs)
            except Exception as exc:
                raise translate(self, exc, handler.__name__, context) from None
            call.handled(result)
            return result

    return cast("Handler[P, R]", wrapper)


def _handler(handler: Handler[P, R]) -> Handler[P, R]:
    """For the methods whose Flight errors pyarrow sends as they are."""
    return _edge(handler, lambda server, exc, where, _: server.errors.flight_error(exc, where))


def _trailer_handler(handler: Handler[P, R]) -> Handler[P, R]:
    """For get_schema, do_action and do_exchange, whose Flight errors pyarrow does not translate."""
    return _edge(handler, lambda server, exc, where, context: server.errors.trailer_error(
        exc, where, context))


class TrainingSetFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    """Arrow Flight front of `TrainingSets`."""

    def __init__(
        self,
        location: str,
        training: TrainingSets,
        *,
        advertised: str | None = None,
        middleware: dict[str, flight.ServerMiddlewareFactory] | None = None,
        errors: ErrorPolicy | None = None,
        tls: KeyPair | None = None,
    ) -> None:
        tls_options: dict[str, Any] = {}
        if tls is not None:
            tls_options = {"tls_certificates": [flight.CertKeyPair(tls.cert, tls.key)]}
            if tls.client_ca is not None:
                tls_options.update(verify_client=True, root_certificates=tls.client_ca)
        super().__init__(location, middleware=middleware or None, **tls_options)
        self.training = training
        self.errors = errors or ErrorPolicy()
        self._locations = [flight.Location(advertised)] if advertised else []
        # Expired spines are swept on a timer, not only when someone uploads; so are
        # expired training sets a Spark-engine server staged (whichever server it was).
        staging = StagingArea(training.engine.offline_root, training.clock)
        self.spine_sweeper = Periodic(
            "quiver-spine-sweep", training.config.spine_sweep_seconds,
            lambda: training.spines.sweep() + staging.sweep(force=True),
        )
        self.spine_sweeper.start()
        config = training.config
        self.streams = CallSlots(
            "training-set streams", "max_concurrent_streams", config.max_concurrent_streams
        )
        self.uploads = CallSlots("spine uploads", "max_concurrent_uploads", config.max_concurrent_uploads)
        self.health: FlightHealth | None = None

    def shutdown(self) -> None:
        """Refuse new calls, wait for running ones, then stop the background jobs.

        The health service keeps answering NOT_SERVING while calls drain: stopped
        first, it cancelled probes' and watchers' streams before they were told.
        """
        self.spine_sweeper.stop()
        if self.health is not None:
            self.health.stop_serving()
        super().shutdown()
        self.stop_jobs()

    def __exit__(self, *exc_info: object) -> None:
        self.stop_jobs()
        super().__exit__(*exc_info)

    def attach_health(self, health: FlightHealth) -> None:
        """Start `health`, and stop it with the server."""
        self.health = health
        health.start()

    def stop_jobs(self) -> None:
        self.spine_sweeper.stop()
        if self.health is not None:
            # A moment for NOT_SERVING to reach watchers before their streams end.
            self.health.stop(0.5)


    @_handler
    @with_call_access
    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        command = _command(descriptor)
        if not isinstance(command, pb.UploadSpineCommand):
            raise InvalidArgumentError.for_field(
                "descriptor.cmd", "do_put takes an UploadSpineCommand", reason="WRONG_COMMAND"
            )
        access = self.training.access
        if access.enabled:
            access.check_any(self.training.snapshot(), Action.READ_OFFLINE,
                             "upload a spine (that needs READ_OFFLINE on some feature)", "spine")
        if command.timestamp_column:
            check_timestamp_column(reader.schema, command.timestamp_column)
        count = flight_call_counter(context)
        # The slot is given back before the answer is sent, so a client that
        # has its answer can upload again at once.
        with self.uploads.claim():
            spine = self.training.spines.put(reader.schema, _received(reader, count))
        access.record([f"spine:{spine.spine_id}"])
        result = pb.UploadSpineResult(spine_id=spine.spine_id, rows=spine.num_rows)
        if spine.expires_at is not None:
            result.expires_at.FromDatetime(timestamp_seconds(spine.expires_at))
        writer.write(pa.py_buffer(result.SerializeToString()))

    @_handler
    @with_call_access
    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        command = _command(descriptor)
        metadata = b""
        if isinstance(command, pb.CreateTrainingDatasetCommand):
            plan, info = self.training.datasets.create(command, call_principal())
            metadata = info.SerializeToString()
        elif isinstance(command, pb.TrainingDatasetCommand):
            plan, info = self.training.datasets.pull(command)
            metadata = info.SerializeToString()
        else:
            plan = self.training.plan(_training_command(descriptor))
        endpoints = [flight.FlightEndpoint(ticket, self._locations) for ticket in plan.tickets]
        return flight.FlightInfo(
            plan.schema, descriptor, endpoints, total_records=plan.rows, total_bytes=-1,
            ordered=True, app_metadata=metadata,
        )

    @_trailer_handler
    @with_call_access
    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        return flight.SchemaResult(self.training.schema(_training_command(descriptor)))

    @_handler
    @with_call_access
    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        with self.streams.claim() as slot:  # held by the stream until it ends
            job = self.training.open_ticket(ticket.ticket)
            # The next batch is joined while this one is sent; a client that hangs up
            # stops the join and frees this handler (`context.is_cancelled`).
            batches = Prefetch(
                job.batches, _PREFETCH_BATCHES, cancelled=context.is_cancelled,
                on_item=flight_call_counter(context),
                on_error=lambda exc: self.errors.flight_error(exc, "do_get"), name="quiver-do-get",
            )
            return flight.GeneratorStream(job.schema, slot.hold(batches))

    @_handler
    @with_call_access
    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        wanted = pb.ListFlightsCriteria()
        if criteria:
            try:
                wanted.ParseFromString(criteria)
            except Exception:
                raise InvalidArgumentError.for_field(
                    "criteria", "expected a serialized quiver.flight.v1.ListFlightsCriteria",
                    reason="INVALID_CRITERIA",
                ) from None
        infos = []
        for info, command, schema in self.training.feature_sets(wanted.name_prefix):
            descriptor = flight.FlightDescriptor.for_command(pack(command))
            infos.append(flight.FlightInfo(
                schema, descriptor, [], total_records=-1, total_bytes=-1,
                app_metadata=info.SerializeToString(),
            ))
        return iter(infos)

    @_handler
    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return []

    @_trailer_handler
    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[bytes]:
        raise UnimplementedError(
            f"this Flight server offers no actions (asked for {clip(action.type)!r}); "
            f"list_actions lists none", reason="UNIMPLEMENTED",
        )

    @_trailer_handler
    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        raise UnimplementedError(
            "this Flight server does not offer do_exchange; upload spines with do_put and "
            "fetch training sets with get_flight_info and do_get", reason="UNIMPLEMENTED",
        )


def _command(descriptor: flight.FlightDescriptor) -> object:
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        raise InvalidArgumentError.for_field(
            "descriptor", "use a command descriptor holding a quiver.flight.v1 command",
            reason="INVALID_COMMAND",
        )
    return unpack_command(descriptor.command)


def _training_command(descriptor: flight.FlightDescriptor) -> pb.TrainingSetCommand:
    command = _command(descriptor)
    if not isinstance(command, pb.TrainingSetCommand):
        raise InvalidArgumentError.for_field(
            "descriptor.cmd", "this call takes a TrainingSetCommand", reason="WRONG_COMMAND"
        )
    return command


def _received(
    reader: flight.MetadataRecordBatchReader, count: Callable[[pa.RecordBatch], None] | None
) -> Iterator[pa.RecordBatch]:
    for chunk in reader:
        if count is not None:
            count(chunk.data)
        yield chunk.data


def create_flight_server(
    config: QuiverConfig,
    location: str = "grpc://127.0.0.1:0",
    *,
    telemetry: Telemetry | None = None,
    clock: Callable[[], float] = time.time,
    cache_bytes: int | None = None,
    health_port: int = 0,
) -> tuple[FlightServerHandle, int]:
    """Build and start a training-set Flight server, and its health service.

    Args:
        config: The repo's configuration (offline store, registry, flight, auth).
        location: Where to listen (its host and port; the scheme follows
            `flight.tls`); port 0 picks a free port.
        telemetry: Tracing/metrics/access log; built from `config` if None.
        clock: Seconds since the epoch, for spine expiry (tests fake it).
        cache_bytes: Budget for cached history indexes and features; default
            `flight.history_cache_bytes`.
        health_port: Port of the gRPC health service, on the same host; 0
            picks a free one (`serve` passes `flight.health_port`). The
            server's ``health.port`` is the port bound.

    Returns:
        The running server (rebuilt when its TLS certificate changes) and its port.
    """
    flight_config = config.flight
    if cache_bytes is None:
        cache_bytes = flight_config.history_cache_bytes
    governance = GovernancePaths.of(config)
    engine = training_engine(config, cache_bytes=cache_bytes, clock=clock,
                             exclusions=PendingErasures(governance))
    spines = SpineStore(
        config.offline_root, flight_config, directory=spine_directory(config), clock=clock
    )
    authenticator = build_authenticator(config)
    profiler = (
        TrainingSetProfiler(ProfileStore(config.offline_root),
                            config.monitoring.training_set_sketch_rows)
        if config.monitoring.enabled else None
    )
    training = TrainingSets(
        RegistryStore(config.registry_path), engine, spines, TicketSigner.from_config(config),
        flight_config, clock, profiler, access=AccessControl(enabled=authenticator is not None),
        transformations=Transformations(config.repo_path),
        governance=governance,
    )
    telemetry = telemetry or setup_telemetry(config, "flight")
    # Telemetry first, so its middleware sees every call the auth middleware lets through.
    middleware = dict(telemetry.flight_middleware())
    if authenticator is not None:
        middleware[AUTH_MIDDLEWARE_KEY] = AuthMiddlewareFactory(authenticator)
    tls = flight_config.tls
    pairs = (ReloadingKeyPair(tls_paths(config, tls), tls.reload_check_seconds, "flight.tls")
             if tls.enabled else None)
    errors = server_error_policy(config)

    def build(at: str, pair: KeyPair | None) -> TrainingSetFlightServer:
        try:
            return TrainingSetFlightServer(
                at, training, advertised=flight_config.location, middleware=middleware,
                errors=errors, tls=pair,
            )
        except pa.ArrowException as exc:  # Arrow says only "Server did not start properly"
            raise DefinitionError(
                f"flight.port: cannot listen on {at} (is the port in use?): {exc}"
            ) from None

    parsed = urlparse(location)
    host = parsed.hostname or flight_config.host
    handle = FlightServerHandle(build, host, parsed.port or 0, pairs)
    try:
        # The health service belongs to the handle: it outlives servers replaced by a rotation.
        handle.attach_health(FlightHealth(
            training.readiness, f"{host}:{health_port}", flight_config.health_check_seconds
        ))
    except BaseException:
        handle.shutdown()
        raise
    return handle, handle.port


def spine_directory(config: QuiverConfig) -> SpineDirectory:
    """The directory Parquet spines are named in, checked to hold no history or registry."""
    return SpineDirectory(
        config.offline_root, config.flight.spine_root,
        apart=[str(config.registry_path), resolve_path(config.offline_root, SPINE_DIRECTORY)],
        outside=[config.offline_root],
    )


def server_error_policy(config: QuiverConfig) -> ErrorPolicy:
    """Errors that name the server's directories by role, never by path."""
    return ErrorPolicy({
        config.offline_root: "<offline store>",
        str(config.registry_path): "<registry>",
        str(config.repo_path): "<feature repo>",
        resolve_path(config.offline_root, config.flight.spine_root): "<spines>",
    }, opaque=[str(config.registry_path)])


def serve(
    config: QuiverConfig, host: str | None = None, port: int | None = None,
    *, health_port: int | None = None,
) -> None:
    """Serve training sets over Arrow Flight until SIGTERM or SIGINT.

    Prints ``quiver: serving Arrow Flight on HOST:PORT`` once it listens, then
    ``quiver: health (grpc.health.v1) on HOST:PORT``.
    """
    configure_logging(config.telemetry.logging)
    # Partitions are served on parallel threads whose heavy work is numpy and
    # Arrow calls that release the GIL. With the default 5 ms switch interval a
    # thread finishing such a call often waits out another's whole interval;
    # 1 ms lets two partitions use two cores (measured: 1.7x instead of ~1.1x).
    sys.setswitchinterval(_SWITCH_INTERVAL_SECONDS)
    telemetry = setup_telemetry(config, "flight", install=True)
    metrics = config.telemetry.metrics
    if telemetry.metrics is not None:
        try:
            telemetry.serve_metrics(metrics.port, metrics.host)
        except OSError as exc:
            log.warning("metrics endpoint not started", port=metrics.port, error=str(exc))
    host = host or config.flight.host
    port = config.flight.port if port is None else port
    if health_port is None:
        health_port = config.flight.health_port
    server, bound = create_flight_server(
        config, f"grpc://{host}:{port}", telemetry=telemetry, health_port=health_port
    )
    health = server.health
    assert health is not None
    print(f"quiver: serving Arrow Flight on {host}:{bound}", flush=True)
    print(f"quiver: health (grpc.health.v1) on {host}:{health.port}", flush=True)
    log.info("serving", address=f"{host}:{bound}", health_port=health.port,
             offline_root=config.offline_root)
    warn_if_open(config, "flight", f"{host}:{bound}")
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("draining", signal=signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    health.stop_serving()
    # shutdown() refuses new calls and waits for running ones; bound the wait.
    stopper = threading.Thread(target=server.shutdown, name="flight-shutdown", daemon=True)
    stopper.start()
    stopper.join(config.flight.grace_seconds)
    telemetry.shutdown()
    log.info("stopped")
