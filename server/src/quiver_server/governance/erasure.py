"""Privacy erasure from the offline history (and the online store) in one call.

An erasure runs in steps, each safe to repeat, so that a process killed at
any point leaves nothing half written and the next run completes the work:

1. **Request**: a pending record (the views and the keys to erase) is stored
   durably and a ``requested`` line is appended to the erasure log. From now
   on training sets planned by Flight and materialization runs leave these
   entities out (`PendingErasures`), even though their rows still exist.
2. **Datasets**: stored training datasets whose kept spine holds one of the
   entities are marked as no longer reproducible.
3. **Online**: the entities' online rows are deleted, view by view under the
   view's lock, which materialization holds (shared) while it reads and
   writes: a run planned before the request cannot write them back after.
4. **History**: each file of each view that holds one of the entities is
   rewritten without those rows: a new file under a hidden name in the same
   directory, flushed to disk, then renamed over the old one (atomic), and the
   directory flushed. Files without the entities are not touched. A
   ``file_rewritten`` line records the file, how many rows left and the new
   file's size and modification time.
5. **Spines**: the kept spines of the marked datasets lose the entities' rows.
6. **Done**: a ``completed`` line, and the pending record is removed.

The log (``governance/erasures/log.jsonl``) is append-only and never holds
the erased values: entity keys appear only as keyed hashes (see `entities`).
Rewrites of one view hold that view's lock, which compaction takes too.

Testing hook: with ``QUIVER_ERASURE_PAUSE=after:N`` (or ``before_swap:N``)
the process prints ``quiver: erasure paused`` to stderr after N rewritten
files (or with file N+1 written but not yet renamed) and blocks until killed;
tests use it to kill an erasure at a known point.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import secrets
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import structlog

from quiver import FeatureView
from quiver.errors import FailedPreconditionError, NotFoundError
from quiver.registry.v1 import governance_pb2 as gpb
from quiver_server.deletion import delete_entities, target_views
from quiver_server.durable import fsync_directory, fsync_file
from quiver_server.governance.compaction import settle
from quiver_server.governance.datasets import DatasetStore, label
from quiver_server.governance.entities import (
    KeyTuple,
    decode_value,
    encode_value,
    filter_expression,
    hash_key,
    load_secret,
    table_mask,
    view_keys,
)
from quiver_server.governance.files import (
    append_line,
    locked,
    records_in,
    write_durable,
)
from quiver_server.governance.paths import GovernancePaths
from quiver_server.governance.progress import RewriteCallback, RewriteProgress, ignore
from quiver_server.governance.spinefile import read_spine, write_spine
from quiver_server.offline.source import drop_checksum, resolve_path
from quiver_server.online.base import OnlineStore, ViewTable
from quiver_server.online.keys import encode_keys
from quiver_server.registry.snapshot import Snapshot
from quiver_server.registry.store import RegistryStore

log = structlog.get_logger(__name__)

PAUSE_ENV = "QUIVER_ERASURE_PAUSE"
_TEMP_MARK = ".erasing-"


@dataclass(frozen=True)
class ErasureRequest:
    """A pending erasure: what to erase, from where, asked by whom and when."""

    erasure_id: str
    requested_at: str
    requested_by: str
    views: tuple[str, ...]
    entities: dict[str, list[Any]]

    def to_json(self) -> bytes:
        return json.dumps({
            "erasure_id": self.erasure_id,
            "requested_at": self.requested_at,
            "requested_by": self.requested_by,
            "views": list(self.views),
            "entities": {k: [encode_value(v) for v in vs] for k, vs in self.entities.items()},
        }, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ErasureRequest:
        raw = json.loads(data)
        return cls(
            erasure_id=raw["erasure_id"], requested_at=raw["requested_at"],
            requested_by=raw["requested_by"], views=tuple(raw["views"]),
            entities={k: [decode_value(v) for v in vs] for k, vs in raw["entities"].items()},
        )


@dataclass
class ErasureOutcome:
    """What one erasure did."""

    erasure_id: str
    feature_views: list[str]
    online_rows_deleted: int = 0
    files_rewritten: int = 0
    rows_removed: int = 0
    datasets_affected: list[str] = field(default_factory=list)


class PendingErasures:
    """The erasures requested but not completed, as planners must honour them.

    Reading is cheap when nothing is pending (one directory listing); parsed
    records are cached by file name, since a pending record never changes.
    """

    def __init__(self, paths: GovernancePaths) -> None:
        self.paths = paths
        self._cache: dict[str, ErasureRequest] = {}
        self._lock = threading.Lock()

    def requests(self) -> list[ErasureRequest]:
        names = records_in(self.paths.erasures_pending)
        found = []
        for name in names:
            with self._lock:
                request = self._cache.get(name)
            if request is None:
                try:
                    request = ErasureRequest.from_json((self.paths.erasures_pending / name).read_bytes())
                except FileNotFoundError:
                    continue  # completed meanwhile
                with self._lock:
                    self._cache[name] = request
            found.append(request)
        return found

    def for_view(self, view: FeatureView) -> tuple[list[KeyTuple], str]:
        """Keys of `view` (in join key order) to leave out, and a tag naming the erasures."""
        keys: list[KeyTuple] = []
        ids = []
        for request in self.requests():
            if view.name in request.views:
                keys.extend(view_keys(view, request.entities))
                ids.append(request.erasure_id)
        return list(dict.fromkeys(keys)), ",".join(ids)

    def on_spine(self, spine: pa.Table, views: Sequence[FeatureView]) -> list[str]:
        """Ids of the pending erasures that remove rows of `spine` (joined with `views`)."""
        found = []
        for request in self.requests():
            erased = [v for v in views if v.name in request.views]
            if erased and _count(_spine_mask(spine, erased, request)):
                found.append(request.erasure_id)
        return found

    def filter_for(self, view: FeatureView) -> ds.Expression | None:
        """A dataset filter keeping every row except the pending erasures' (None: keep all)."""
        keys, _ = self.for_view(view)
        if not keys:
            return None
        expression = filter_expression([source_column(view, k) for k in view.join_key_names], keys)
        return None if expression is None else ~expression


def hashed_names(view: FeatureView) -> list[str]:
    """A view's join key names in the order its entity keys are hashed in the log."""
    return sorted(view.join_key_names)


def source_column(view: FeatureView, name: str) -> str:
    for source, target in view.source.field_mapping.items():
        if target == name:
            return source
    return name


class _Pause:
    """The testing hook described in the module docstring."""

    def __init__(self) -> None:
        spec = os.environ.get(PAUSE_ENV, "")
        where, _, count = spec.partition(":")
        self.where = where if where in ("after", "before_swap") and count.isdigit() else ""
        self.count = int(count) if self.where else 0
        self.rewritten = 0

    def check(self, where: str) -> None:
        if self.where == where and self.rewritten == self.count:
            print(f"quiver: erasure paused {where} {self.rewritten} files", file=sys.stderr, flush=True)
            threading.Event().wait()


class Eraser:
    """Carries out erasures for one repo.

    Args:
        paths: The governance layout.
        snapshot: Registry version whose views are erased from.
        store: Online store to delete from (None: the online rows are left,
            e.g. when a serving server already deleted them).
        by: The principal recorded in the log.
        progress: Called as each view's files are checked.
    """

    def __init__(
        self,
        paths: GovernancePaths,
        snapshot: Snapshot,
        store: OnlineStore | None,
        by: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        progress: RewriteCallback = ignore,
    ) -> None:
        self.paths = paths
        self.snapshot = snapshot
        self.store = store
        self.by = by
        self.clock = clock
        self.datasets = DatasetStore(paths)
        self.progress = progress
        self._pause = _Pause()

    def erase(
        self, entities: Mapping[str, Sequence[Any]], views: Sequence[str] = (),
        *, authorize: Callable[[list[FeatureView]], None] | None = None,
    ) -> ErasureOutcome:
        """Erase `entities` online and offline (every view keyed by them unless `views`).

        `authorize` is called with the views before anything is written; it
        raises to refuse. Pending erasures left by an interrupted run are
        completed first; when
        one of them asked for exactly this, completing it is the answer (a rerun
        after a crash adds no second request to the log).

        Raises:
            InvalidArgumentError: key columns that do not fit the views.
            NotFoundError: a named view does not exist.
            FailedPreconditionError: a history file lacks a join key column.
        """
        targets = target_views(
            self.snapshot, entities, views, online_only=False, authorize=authorize
        )
        wanted = {k: list(entities[k]) for k in entities}
        same: ErasureOutcome | None = None
        for pending in PendingErasures(self.paths).requests():
            result = self._carry_out(pending)
            if pending.entities == wanted and set(pending.views) == {v.name for v in targets}:
                same = result
        if same is not None:
            return same
        request = ErasureRequest(
            erasure_id=f"e-{self.clock().strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}",
            requested_at=self.clock().isoformat(),
            requested_by=self.by,
            views=tuple(v.name for v in targets),
            entities={k: list(entities[k]) for k in entities},
        )
        write_durable(self.paths.erasures_pending / f"{request.erasure_id}.json", request.to_json())
        secret = load_secret(self.paths.erasure_key)
        names = sorted(entities)
        count = len(next(iter(entities.values())))
        # Hashed again on each view's own keys where they are fewer than the ones
        # given: a backfill recomputing a view checks its keys against these.
        projected = {
            v.name: [hash_key(secret, hashed_names(v), tuple(key[v.join_key_names.index(n)]
                                                              for n in hashed_names(v)))
                     for key in view_keys(v, entities)]
            for v in targets if hashed_names(v) != names
        }
        append_line(self.paths.erasure_log, {
            "event": "requested", "erasure_id": request.erasure_id, "at": request.requested_at,
            "by": self.by, "views": list(request.views), "entities": count,
            "key_hashes": [hash_key(secret, names, tuple(entities[n][i] for n in names))
                           for i in range(count)],
            **({"view_key_hashes": projected} if projected else {}),
        })
        return self._carry_out(request)

    def resume(self) -> list[ErasureOutcome]:
        """Complete every pending erasure (idempotent)."""
        return [self._carry_out(r) for r in PendingErasures(self.paths).requests()]

    def _carry_out(self, request: ErasureRequest) -> ErasureOutcome:
        views = [self.snapshot.feature_views[n] for n in request.views if n in self.snapshot.feature_views]
        result = ErasureOutcome(request.erasure_id, [v.name for v in views])
        # A dataset being recorded now either saw this request pending (and
        # was refused) or is published before this looks: none slips between.
        with locked(self.paths.datasets_lock):
            marked = self._mark_datasets(request, views)
        result.datasets_affected = [label(d) for d in marked]
        for view in views:
            # Under the view's lock, which a materialization holds while it
            # writes: rows it read before the request cannot land after this.
            with locked(self.paths.view_lock(view.name)):
                if self.store is not None and view.online:
                    result.online_rows_deleted += self._delete_online(request, view)
                files, rows = self._erase_view(request, view)
            result.files_rewritten += files
            result.rows_removed += rows
        for dataset in marked:
            self._scrub_spine(request, dataset, views)
        append_line(self.paths.erasure_log, {
            "event": "completed", "erasure_id": request.erasure_id, "at": self.clock().isoformat(),
            "by": self.by, "files_rewritten": result.files_rewritten,
            "rows_removed": result.rows_removed, "online_rows_deleted": result.online_rows_deleted,
            "datasets_affected": result.datasets_affected,
        })
        pending = self.paths.erasures_pending / f"{request.erasure_id}.json"
        pending.unlink(missing_ok=True)
        fsync_directory(pending.parent)
        log.info("erasure completed", erasure_id=request.erasure_id,
                 files_rewritten=result.files_rewritten, rows_removed=result.rows_removed)
        return result

    def _delete_online(self, request: ErasureRequest, view: FeatureView) -> int:
        """Delete the entities' online rows of `view`; for a computed view, from the
        online storage of every version: the one served, one a backfill switched to
        since this erasure read the registry (the caller holds the view's lock,
        which a backfill holds until it switches), and earlier or abandoned ones.
        Versions are numbered from 1 and never reused; 0 is the view's own storage."""
        assert self.store is not None
        deleted = delete_entities(self.store, self.snapshot, request.entities, [view.name]).rows_deleted
        if view.transformation is None:
            return deleted
        from quiver_server.backfill.versions import versions_on_disk

        served = self.snapshot.view_table(view.name)
        try:
            latest = RegistryStore(self.paths.registry).latest().view_table(view.name).generation
        except (FailedPreconditionError, NotFoundError):
            latest = served.generation
        keys = encode_keys(view.join_keys, [request.entities[k] for k in view.join_key_names])
        # Every number up to the highest (abandoned versions' directories may be gone),
        # from 0: the view's own storage, which pushes before its first backfill wrote.
        highest = max([latest, served.generation, *versions_on_disk(self.paths.offline_root, view.name)])
        for generation in range(highest + 1):
            if generation != served.generation:
                table = ViewTable(served.project, view, served.bin_names, generation)
                deleted += self.store.delete(table, keys)
        return deleted

    def _mark_datasets(
        self, request: ErasureRequest, views: Sequence[FeatureView]
    ) -> list[gpb.TrainingDataset]:
        marked = []
        erased = {v.name: v for v in views}
        for dataset in self.datasets.all():
            used = [erased[h.feature_view] for h in dataset.histories if h.feature_view in erased]
            if not used:
                continue
            try:
                spine = read_spine(self.paths.offline_root, dataset.spine.path)
            except FileNotFoundError:
                continue
            if _count(_spine_mask(spine, used, request)):
                self.datasets.mark_erased(dataset, request.erasure_id)
                marked.append(dataset)
            elif request.erasure_id in self.datasets.erasures(dataset):
                marked.append(dataset)
        return marked

    def _scrub_spine(
        self, request: ErasureRequest, dataset: gpb.TrainingDataset, views: Sequence[FeatureView]
    ) -> None:
        used = [v for v in views if v.name in {h.feature_view for h in dataset.histories}]
        try:
            spine = read_spine(self.paths.offline_root, dataset.spine.path)
        except FileNotFoundError:
            return
        mask = _spine_mask(spine, used, request)
        removed = _count(mask)
        if removed == 0:
            return
        keep = spine.filter(pc.invert(mask))
        write_spine(self.paths.offline_root, dataset.spine.path, spine.schema,
                    keep.to_batches(max_chunksize=65_536))
        append_line(self.paths.erasure_log, {
            "event": "spine_rewritten", "erasure_id": request.erasure_id,
            "at": self.clock().isoformat(), "dataset": label(dataset), "rows_removed": removed,
        })

    def _erase_view(self, request: ErasureRequest, view: FeatureView) -> tuple[int, int]:
        files = rows = 0
        for location in self._locations(view):
            done = self._erase_location(request, view, location)
            files, rows = files + done[0], rows + done[1]
        return files, rows

    def _locations(self, view: FeatureView) -> list[str]:
        """Where the view's history is: for a computed view, every version on disk.

        The previous version stays for tickets planned on it, and a backfill may
        have put a new one in place since this erasure's registry version was read.
        """
        current = resolve_path(self.paths.offline_root, view.source.path)
        if view.transformation is None:
            return [current]
        from quiver_server.backfill.versions import version_path, versions_on_disk

        others = [resolve_path(self.paths.offline_root, version_path(view.name, n))
                  for n in versions_on_disk(self.paths.offline_root, view.name)]
        return [current, *(o for o in others if o.rstrip("/") != current.rstrip("/"))]

    def _erase_location(
        self, request: ErasureRequest, view: FeatureView, location: str
    ) -> tuple[int, int]:
        keys = view_keys(view, request.entities)
        columns = [source_column(view, k) for k in view.join_key_names]
        expression = filter_expression(columns, keys)
        # A merge a killed compaction left holds the rows too: finish or drop it first.
        listing = settle(self.paths, view.name, location)
        if listing is None or expression is None:
            return 0, 0
        fs = listing.filesystem
        if listing.is_directory:
            _remove_stale_temps(fs, listing.base, recursive=True)
        else:  # a single-file source: only its own directory, not what is beside it
            _remove_stale_temps(fs, posixpath.dirname(listing.base), recursive=False)
        files = rows = 0
        for checked, info in enumerate(listing.files):
            self.progress(RewriteProgress("erasure", view.name, checked, len(listing.files)))
            with fs.open_input_file(info.path) as handle:
                parquet = pq.ParquetFile(handle)
                schema = parquet.schema_arrow
                missing = [c for c in columns if schema.get_field_index(c) < 0]
                if missing:
                    raise FailedPreconditionError(
                        f"feature view {view.name!r}: history file "
                        f"{_relative(listing.base, info.path)!r} has no join key column "
                        f"{missing[0]!r}; erase it by hand or fix the file",
                        reason="ERASURE_MISSING_KEY", metadata={"feature_view": view.name},
                    )
            hits = ds.dataset(info.path, filesystem=fs, format="parquet").count_rows(filter=expression)
            if hits == 0:
                continue

            def record(removed: int, new: pafs.FileInfo, old: pafs.FileInfo = info) -> None:
                append_line(self.paths.erasure_log, {
                    "event": "file_rewritten", "erasure_id": request.erasure_id,
                    "at": self.clock().isoformat(), "view": view.name,
                    "path": _relative(listing.base, old.path), "rows_removed": removed,
                    "old_size": old.size, "old_mtime_ns": old.mtime_ns,
                    "size": new.size, "mtime_ns": new.mtime_ns,
                })

            rows += self._rewrite(fs, info.path, columns, keys, record)
            files += 1
            self._pause.rewritten += 1
            self._pause.check("after")
        self.progress(RewriteProgress("erasure", view.name, len(listing.files), len(listing.files)))
        return files, rows

    def _rewrite(
        self, fs: pafs.FileSystem, path: str, columns: list[str], keys: list[KeyTuple],
        record: Callable[[int, pafs.FileInfo], None],
    ) -> int:
        """Rewrite `path` without the keys' rows; `record` logs it (rows removed, new file).

        On a local disk the line is written before the rename, with the new
        file's size and modification time (a rename keeps both): a kill right
        after the swap would otherwise leave a rewrite nobody can follow, and
        datasets whose spines lack the entity would read as changed. A kill
        between the line and the swap leaves the old file, which the rerun
        rewrites again with a new line (the later one is followed).
        """
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            table = parquet.read()
            row_group = max((parquet.metadata.row_group(i).num_rows
                             for i in range(parquet.metadata.num_row_groups)), default=0)
        mask = table_mask(table, columns, keys)
        keep = table.filter(pc.invert(mask))
        directory, name = posixpath.split(path)
        temp = posixpath.join(directory, f".{name}{_TEMP_MARK}{secrets.token_hex(4)}")
        pq.write_table(keep, temp, filesystem=fs, row_group_size=row_group or None)
        local = isinstance(fs, pafs.LocalFileSystem)
        if local:
            fsync_file(temp)
        self._pause.check("before_swap")
        # Before the swap: Spark checks a stale checksum file and fails; none, it reads.
        drop_checksum(fs, path)
        removed = int(table.num_rows - keep.num_rows)
        if local:
            record(removed, fs.get_file_info(temp))
            os.replace(temp, path)
            fsync_directory(directory)
        else:
            fs.move(temp, path)  # an object store's move may give it a new time
            record(removed, fs.get_file_info(path))
        return removed


def _count(mask: Any) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _spine_mask(spine: pa.Table, views: Sequence[FeatureView], request: ErasureRequest) -> Any:
    mask: Any = pa.chunked_array([pa.array([False] * spine.num_rows, pa.bool_())])
    for view in views:
        if not all(spine.schema.get_field_index(k) >= 0 for k in view.join_key_names):
            continue
        mask = pc.or_(mask, table_mask(spine, view.join_key_names, view_keys(view, request.entities)))
    return mask


def _relative(base: str, path: str) -> str:
    return path[len(base):].lstrip("/")


def _remove_stale_temps(fs: pafs.FileSystem, base: str, recursive: bool) -> None:
    """Delete rewrites that a killed erasure left under hidden names (never renamed)."""
    try:
        found = fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
    except OSError:
        return
    for info in found:
        if info.type == pafs.FileType.File and _TEMP_MARK in posixpath.basename(info.path) \
                and posixpath.basename(info.path).startswith("."):
            with contextlib.suppress(OSError):
                fs.delete_file(info.path)
