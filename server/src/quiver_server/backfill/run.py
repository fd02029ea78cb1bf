"""The `quiver backfill` command's work: plan the windows, compute them, record and switch."""

from __future__ import annotations

import copy
import functools
import posixpath
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from quiver import FeatureView
from quiver.errors import FailedPreconditionError, InvalidArgumentError
from quiver.registry.v1 import registry_pb2 as pb
from quiver_server.backfill.local import compute_local, function_code
from quiver_server.backfill.versions import (
    Window,
    chunk_path,
    fingerprint,
    gaps,
    merged,
    set_windows,
    version_path,
    versions_on_disk,
    windows_of,
)
from quiver_server.config import AerospikeOnlineStoreConfig, QuiverConfig
from quiver_server.governance.erased import ErasedEntities
from quiver_server.governance.erasure import PendingErasures
from quiver_server.governance.files import locked
from quiver_server.governance.paths import GovernancePaths
from quiver_server.materialize import ViewMaterialization
from quiver_server.offline.source import filesystem_and_path, resolve_path
from quiver_server.online.base import ViewTable
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class BackfillResult:
    """What a backfill did.

    Attributes:
        view: The feature view.
        version: The history version it wrote to (the current one afterwards).
        new_version: Whether it started a new version (and switched to it).
        windows: The windows computed; empty when all were backfilled already.
        rows: History rows written.
        materialized: The new version's materialization, when it switched an online view.
        seconds: Wall time.
    """

    view: str
    version: int
    new_version: bool
    windows: list[Window]
    rows: int
    materialized: ViewMaterialization | None
    seconds: float

    def __str__(self) -> str:
        if not self.windows:
            return f"{self.view}: history version {self.version} already holds the window; nothing to do"
        spans = ", ".join(f"[{a.isoformat()}, {b.isoformat()})" for a, b in self.windows)
        text = f"{self.view}: {self.rows:,} rows into history version {self.version} for {spans}"
        if self.new_version:
            text += f"; switched to version {self.version}"
        return f"{text} in {self.seconds:.2f} s"


def backfill(
    config: QuiverConfig, view_name: str, start: datetime, end: datetime,
    *, engine: str | None = None,
) -> BackfillResult:
    """Compute a view's history for ``[start, end)`` with its transformation.

    Args:
        config: The feature repo's configuration.
        view_name: A feature view whose source is a `BatchTransformation`.
        start: Window start, inclusive (naive means UTC).
        end: Window end, exclusive (naive means UTC).
        engine: "local" or "spark"; default `offline_store.engine`.

    Raises:
        InvalidArgumentError: `start` is not before `end`, or the view has no transformation.
        NotFoundError: no such view.
        DefinitionError: the transformation fails or produces the wrong columns.
        FailedPreconditionError: nothing applied, an input is missing, the view was
            removed meanwhile, or the erasure log's hash key is missing.
    """
    began = time.perf_counter()
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise InvalidArgumentError.for_field(
            "start", f"must be before end; got start={start.isoformat()}, end={end.isoformat()}"
        )
    engine = engine or config.offline_store.engine
    registry = RegistryStore(config.registry_path)
    registry.latest().feature_view(view_name)  # a view that exists names the lock
    paths = GovernancePaths.of(config)

    def waiting() -> None:
        log.info("waiting for another backfill of the view to end", feature_view=view_name)

    # Backfills of one view run one at a time: two starting a new version at once
    # would each clear the version's directory under the other. The registry is
    # read under the lock, so the second sees what the first recorded.
    with locked(paths.backfill_lock(view_name), on_wait=waiting):
        return _backfill(config, registry, view_name, start, end, engine, began)


def _backfill(
    config: QuiverConfig, registry: RegistryStore, view_name: str, start: datetime,
    end: datetime, engine: str, began: float,
) -> BackfillResult:
    snapshot = registry.latest()
    view = snapshot.feature_view(view_name)
    if view.transformation is None:
        raise InvalidArgumentError.for_field(
            "view", f"feature view {view_name!r} reads ready-made history (a ParquetSource); "
            f"only views whose source is a BatchTransformation are backfilled",
        )
    meta = snapshot.proto.view_meta.get(view_name)
    current = meta.history if meta is not None and meta.HasField("history") else pb.HistoryVersion()
    digest = fingerprint(view, function_code(view, str(config.repo_path)))
    same = current.version > 0 and current.fingerprint == digest
    # A new version takes a number no attempt used: one killed before its switch left
    # rows in that number's online storage, which a switch to it would serve.
    on_disk = versions_on_disk(config.offline_root, view_name)
    version = current.version if same else max([current.version, *on_disk]) + 1
    todo = gaps(windows_of(current), (start, end)) if same else [(start, end)]
    if not todo:
        return BackfillResult(view_name, version, False, [], 0, None, time.perf_counter() - began)
    rows = sum(_compute_window(config, view, version, window, engine) for window in todo)
    paths = GovernancePaths.of(config)
    # As materialization does, the view's lock is held shared from reading the
    # new version until it is current: an erasure requested meanwhile waits and
    # then finds the new version's online storage to delete from.
    with locked(paths.view_lock(view_name), shared=True):
        materialized = None
        if not same and view.online:
            materialized = _materialize_version(config, snapshot, view, version, end, engine)
        registry.commit(functools.partial(
            _record, view_name, current.version, same, todo, digest, version, materialized, end
        ))
    if not same:
        # The previous version stays for tickets planned on it; older ones go.
        for old in on_disk:
            if old not in (current.version, version):
                _remove(config, version_path(view_name, old))
    return BackfillResult(view_name, version, not same, todo, rows, materialized,
                          time.perf_counter() - began)


def _record(
    view_name: str, seen: int, same: bool, todo: list[Window], digest: str, version: int,
    materialized: ViewMaterialization | None, end: datetime, proto: pb.Registry,
) -> str:
    """The registry change of a backfill: windows recorded, or the new version made current."""
    stored = next((v for v in proto.feature_views if v.name == view_name), None)
    meta = proto.view_meta[view_name]
    if stored is None or meta.history.version != seen:
        raise FailedPreconditionError(
            f"feature view {view_name!r} was removed or backfilled by someone else while this "
            f"backfill ran; run it again", reason="BACKFILL_CONFLICT",
        )
    history = meta.history
    if same:
        set_windows(history, merged(windows_of(history), todo))
        return "backfill"
    history.Clear()
    history.version = version
    history.fingerprint = digest
    history.path = version_path(view_name, version)
    set_windows(history, todo)
    history.created_at.FromDatetime(datetime.now(UTC))
    # The new version's online rows are complete up to `end`: that is its watermark.
    state = meta.materialization
    state.Clear()
    if materialized is not None:
        state.watermark.FromDatetime(end)
        state.updated_at.FromDatetime(datetime.now(UTC))
    return "backfill"


def _compute_window(config: QuiverConfig, view: FeatureView, version: int, window: Window,
                    engine: str) -> int:
    """Compute one window into a hidden directory, then rename it into the version."""
    final = resolve_path(config.offline_root, chunk_path(view.name, version, window))
    fs, final_path = filesystem_and_path(final)
    parent = posixpath.dirname(final_path)
    fs.create_dir(parent, recursive=True)
    temp_path = posixpath.join(parent, f".tmp-{secrets.token_hex(8)}")
    temp = resolve_path(config.offline_root, posixpath.join(
        posixpath.dirname(chunk_path(view.name, version, window)), posixpath.basename(temp_path)
    ))
    paths = GovernancePaths.of(config)
    # Raw inputs still hold the entities erased from the view: they stay out.
    erased = ErasedEntities.of(paths, view)
    try:
        if engine == "spark":
            from quiver_server.spark.backfill import compute_spark
            from quiver_server.spark.session import spark_session

            rows = compute_spark(spark_session(config.offline_store.spark), config.offline_root,
                                 str(config.repo_path), view, *window, temp, erased)
        else:
            fs.create_dir(temp_path, recursive=True)
            rows = compute_local(config.offline_root, str(config.repo_path), view, *window,
                                 posixpath.join(temp, "part-0.parquet"), erased)
        # Under the view's lock, which an erasure holds while it rewrites every
        # version on disk: one requested while this computed is applied here,
        # one requested later finds these files in place.
        with locked(paths.view_lock(view.name)):
            latest = ErasedEntities.of(paths, view)
            if latest.ids != erased.ids:
                rows -= latest.scrub(fs, temp_path)
            if fs.get_file_info(final_path).type != fs.get_file_info(final_path).type.NotFound:
                fs.delete_dir(final_path)  # unrecorded: left by a backfill that died before its commit
            fs.move(temp_path, final_path)
    except BaseException:
        _delete(fs, temp_path)
        raise
    log.info("backfilled", feature_view=view.name, version=version, rows=rows,
             start=window[0].isoformat(), end=window[1].isoformat())
    return rows


def _materialize_version(
    config: QuiverConfig, snapshot: Snapshot, view: FeatureView, version: int, end: datetime,
    engine: str,
) -> ViewMaterialization:
    """Write the new version's latest rows into its own online storage (not read yet)."""
    from quiver_server.materialize import _ignore, _materialize_view, _plan

    computed = copy.copy(view)
    computed.source = replace(view.source, path=version_path(view.name, version))
    current = snapshot.view_table(view.name)
    table = ViewTable(current.project, computed, current.bin_names, version)
    job = _plan(config, table, None, end)
    # The caller holds the view's lock shared: pending erasures are read under
    # it and their entities left out, as materialization does.
    if engine == "spark" and isinstance(config.online_store, AerospikeOnlineStoreConfig):
        from quiver_server.spark.materialize import latest_rows, write_partitions
        from quiver_server.spark.session import spark_session

        began = time.perf_counter()
        session = spark_session(config.offline_store.spark)
        counts = write_partitions(latest_rows(session, config, job), config.online_store, job,
                                  config.offline_store.spark.write_partitions)
        return ViewMaterialization(view.name, None, end, counts.rows, counts.entities,
                                   counts.entities - counts.superseded, counts.superseded,
                                   time.perf_counter() - began)
    # The embedded SQLite store is written by the local engine only.
    from quiver_server.online.factory import open_online_store

    erasing = PendingErasures(GovernancePaths.of(config)).filter_for(computed)
    if erasing is not None:
        job = replace(job, filter=erasing if job.filter is None else job.filter & erasing)
    store = open_online_store(config)
    try:
        return _materialize_view(store, job, _ignore)
    finally:
        store.close()


def _remove(config: QuiverConfig, relative: str) -> None:
    fs, path = filesystem_and_path(resolve_path(config.offline_root, relative))
    _delete(fs, path)


def _delete(fs: object, path: str) -> None:
    import pyarrow.fs as pafs

    assert isinstance(fs, pafs.FileSystem)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


__all__: Sequence[str] = ["BackfillResult", "backfill"]
