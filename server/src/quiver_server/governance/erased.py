"""Entities erased from a view, for work that computes its history again from raw data.

An erasure rewrites a view's history files without an entity's rows, but a
computed view's backfill reads raw inputs that Quiver does not own and would
compute those rows again. A backfill therefore leaves out the entities of
every erasure of the view: pending ones by their keys (the pending record
holds them) and completed ones by the keyed hashes of the erasure log, which
each distinct key the transformation outputs is hashed against. The log keeps
holding no identities, and no erased entity comes back.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from quiver import FeatureView
from quiver.errors import FailedPreconditionError
from quiver_server.governance.entities import KeyTuple, hash_key, table_mask
from quiver_server.governance.erasure import PendingErasures, hashed_names
from quiver_server.governance.files import read_lines
from quiver_server.governance.paths import GovernancePaths
from quiver_server.offline.source import drop_checksum

_KEY_BYTES = 32


class ErasedEntities:
    """The entities every erasure of one view removed or is removing.

    Picklable (Spark ships it to executors with the batch filter), so it holds
    the hashing key when completed erasures must be checked.

    Attributes:
        view: The feature view's name.
        ids: The erasures of the view, pending or completed.
    """

    def __init__(self, view: FeatureView, keys: frozenset[KeyTuple], hashes: frozenset[str],
                 secret: bytes, ids: frozenset[str]) -> None:
        self.view = view.name
        self.ids = ids
        self._columns = list(view.join_key_names)
        self._names = hashed_names(view)
        self._order = [self._columns.index(n) for n in self._names]
        self._keys = keys
        self._hashes = hashes
        self._secret = secret
        self._seen: dict[KeyTuple, bool] = {}

    @classmethod
    def of(cls, paths: GovernancePaths, view: FeatureView) -> ErasedEntities:
        """Read the pending records and the erasure log for `view`.

        Raises:
            FailedPreconditionError: completed erasures of the view exist but the
                key their hashes were made with is missing, so nobody can tell
                which entities they removed.
        """
        keys, pending_ids = PendingErasures(paths).for_view(view)
        hashes: set[str] = set()
        ids = {i for i in pending_ids.split(",") if i}
        for record in read_lines(paths.erasure_log):
            if record.get("event") != "requested" or view.name not in record.get("views", []):
                continue
            ids.add(str(record.get("erasure_id")))
            hashes.update(record.get("key_hashes", []))
            hashes.update(record.get("view_key_hashes", {}).get(view.name, []))
        secret = b""
        if hashes:
            try:
                secret = paths.erasure_key.read_bytes()
            except FileNotFoundError:
                secret = b""
            if len(secret) != _KEY_BYTES:
                raise FailedPreconditionError(
                    f"feature view {view.name!r} has erasures in the erasure log, but the key "
                    f"their entity hashes were made with (governance/erasures/key in the "
                    f"registry directory) is missing or damaged, so which entities must stay "
                    f"out of its recomputed history cannot be told; restore the key file",
                    reason="ERASURE_KEY_MISSING", metadata={"feature_view": view.name},
                )
        return cls(view, frozenset(keys), frozenset(hashes), secret, frozenset(ids))

    def __bool__(self) -> bool:
        return bool(self._keys or self._hashes)

    def erased(self, key: KeyTuple) -> bool:
        """Whether the entity with `key` (in join key order) was erased from the view."""
        found = self._seen.get(key)
        if found is None:
            if None in key:
                found = False  # a null key names no entity an erasure could name
            elif key in self._keys:
                found = True
            elif not self._hashes:
                found = False
            else:
                ordered = tuple(key[i] for i in self._order)
                found = hash_key(self._secret, self._names, ordered) in self._hashes
            self._seen[key] = found
        return found

    def mask(self, table: pa.Table) -> pa.ChunkedArray:
        """True for the rows of `table` that belong to an erased entity."""
        distinct = table.select(self._columns).group_by(self._columns).aggregate([])
        columns = [distinct[c].to_pylist() for c in self._columns]
        hits = [k for k in zip(*columns, strict=True) if self.erased(k)]
        return table_mask(table, self._columns, hits)

    def keep(self, table: pa.Table) -> pa.Table:
        """`table` without the erased entities' rows."""
        if not self:
            return table
        return table.filter(pc.invert(self.mask(table)))

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Filter Arrow batches (Spark's ``mapInArrow`` on the executors)."""
        for batch in batches:
            yield from self.keep(pa.Table.from_batches([batch])).to_batches()

    def scrub(self, fs: pafs.FileSystem, directory: str) -> int:
        """Rewrite the Parquet files under `directory` without the erased rows; rows removed.

        For output staged under a hidden name, not yet readable by anyone.
        """
        removed = 0
        for info in _parquet_files(fs, directory):
            table = pq.read_table(info.path, filesystem=fs)
            kept = self.keep(table)
            if kept.num_rows < table.num_rows:
                removed += table.num_rows - kept.num_rows
                drop_checksum(fs, info.path)  # Spark's, now stale
                pq.write_table(kept, info.path, filesystem=fs)
        return removed

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_seen"] = {}
        return state


def _parquet_files(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    found = fs.get_file_info(pafs.FileSelector(directory, recursive=True, allow_not_found=True))
    return [i for i in found if i.type == pafs.FileType.File and i.path.endswith(".parquet")
            and not posixpath.basename(i.path).startswith((".", "_"))]
