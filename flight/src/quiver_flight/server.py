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

Errors are the matching `pyarrow.flight` error with a serialized
google.rpc.Status in extra_info; a bad request never takes the server down.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Concatenate, ParamSpec, TypeVar, cast

import pyarrow as pa
import structlog
from pyarrow import flight

from quiver.convert import pack
from quiver.errors import InvalidArgumentError
from quiver.flight.v1 import flight_pb2 as pb
from quiver.prefetch import Prefetch
from quiver_flight.convert import flight_error, timestamp_seconds, unpack_command
from quiver_flight.pit import PointInTimeEngine, check_timestamp_column
from quiver_flight.spines import SpineStore
from quiver_flight.tickets import TicketSigner
from quiver_flight.training import TrainingSets
from quiver_server.config import QuiverConfig
from quiver_server.error_policy import as_quiver_error
from quiver_server.governance.erasure import PendingErasures
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.who import call_principal
from quiver_server.observability import configure_logging
from quiver_server.registry.store import RegistryStore
from quiver_server.telemetry import Telemetry, setup_telemetry
from quiver_server.telemetry.flight_middleware import flight_call, flight_call_counter

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")

# Batches computed ahead of the one being sent, so the join of the next batch
# overlaps the serialization and sending of this one.
_PREFETCH_BATCHES = 2
_SWITCH_INTERVAL_SECONDS = 0.001


def _handler(
    handler: Callable[Concatenate[S, flight.ServerCallContext, P], R],
) -> Callable[Concatenate[S, flight.ServerCallContext, P], R]:
    """The edge of every Flight handler: the call's telemetry is current while it
    runs, and what it raises leaves as a Flight error carrying a google.rpc.Status."""

    @functools.wraps(handler)
    def wrapper(self: S, context: flight.ServerCallContext, *args: P.args, **kwargs: P.kwargs) -> R:
        with flight_call(context) as call:
            try:
                result = handler(self, context, *args, **kwargs)
            except Exception as exc:
                raise _translate(exc, handler.__name__) from None
            call.handled(result)
            return result

    return cast("Callable[Concatenate[S, flight.ServerCallContext, P], R]", wrapper)


def _translate(exc: BaseException, where: str) -> BaseException:
    if isinstance(exc, flight.FlightError):
        return cast(BaseException, exc)
    return flight_error(as_quiver_error(exc, where, store="offline store"))


class TrainingSetFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    """Arrow Flight front of `TrainingSets`."""

    def __init__(
        self,
        location: str,
        training: TrainingSets,
        *,
        advertised: str | None = None,
        middleware: dict[str, flight.ServerMiddlewareFactory] | None = None,
    ) -> None:
        super().__init__(location, middleware=middleware or None)
        self.training = training
        self._locations = [flight.Location(advertised)] if advertised else []

    @_handler
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
        if command.timestamp_column:
            check_timestamp_column(reader.schema, command.timestamp_column)
        count = flight_call_counter(context)
        spine = self.training.spines.put(reader.schema, _received(reader, count))
        result = pb.UploadSpineResult(spine_id=spine.spine_id, rows=spine.num_rows)
        if spine.expires_at is not None:
            result.expires_at.FromDatetime(timestamp_seconds(spine.expires_at))
        writer.write(pa.py_buffer(result.SerializeToString()))

    @_handler
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

    @_handler
    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        return flight.SchemaResult(self.training.schema(_training_command(descriptor)))

    @_handler
    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        job = self.training.open_ticket(ticket.ticket)
        # The next batch is joined while this one is sent; a client that hangs up
        # stops the join and frees this handler (`context.is_cancelled`).
        batches = Prefetch(
            job.batches, _PREFETCH_BATCHES, cancelled=context.is_cancelled,
            on_item=flight_call_counter(context),
            on_error=lambda exc: _translate(exc, "do_get"), name="quiver-do-get",
        )
        return flight.GeneratorStream(job.schema, batches)

    @_handler
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

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return []


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
) -> tuple[TrainingSetFlightServer, int]:
    """Build and start a training-set Flight server.

    Args:
        config: The repo's configuration (offline store, registry, flight).
        location: Where to listen; port 0 picks a free port.
        telemetry: Tracing/metrics/access log; built from `config` if None.
        clock: Seconds since the epoch, for spine expiry (tests fake it).
        cache_bytes: Budget for cached history indexes and features; default
            `flight.history_cache_bytes`.

    Returns:
        The running server and the port it listens on.
    """
    flight_config = config.flight
    if cache_bytes is None:
        cache_bytes = flight_config.history_cache_bytes
    governance = GovernancePaths.of(config)
    engine = PointInTimeEngine(
        config.offline_root, cache_bytes=cache_bytes, batch_rows=flight_config.batch_rows,
        exclusions=PendingErasures(governance),
    )
    spines = SpineStore(
        config.offline_root,
        max_rows=flight_config.max_spine_rows,
        ttl_seconds=flight_config.spine_ttl_seconds,
        batch_rows=flight_config.batch_rows,
        clock=clock,
    )
    training = TrainingSets(
        RegistryStore(config.registry_path), engine, spines, TicketSigner(config.offline_root),
        flight_config, clock, governance,
    )
    telemetry = telemetry or setup_telemetry(config, "flight")
    server = TrainingSetFlightServer(
        location, training, advertised=flight_config.location,
        middleware=telemetry.flight_middleware(),
    )
    return server, server.port


def serve(config: QuiverConfig, host: str | None = None, port: int | None = None) -> None:
    """Serve training sets over Arrow Flight until SIGTERM or SIGINT."""
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
    server, bound = create_flight_server(config, f"grpc://{host}:{port}", telemetry=telemetry)
    print(f"quiver: serving Arrow Flight on {host}:{bound}", flush=True)
    log.info("serving", address=f"{host}:{bound}", offline_root=config.offline_root)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("draining", signal=signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    # shutdown() refuses new calls and waits for running ones; bound the wait.
    stopper = threading.Thread(target=server.shutdown, name="flight-shutdown", daemon=True)
    stopper.start()
    stopper.join(config.flight.grace_seconds)
    telemetry.shutdown()
    log.info("stopped")
