"""What every spine offers the planner and the engine, however it is stored."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

EXPIRES_KEY = b"quiver.spine.expires_at_us"
BATCH_ROWS_KEY = b"quiver.spine.batch_rows"


@dataclass(frozen=True)
class Spine:
    """A spine's schema and rows, and what is known about it without reading rows."""

    name: str
    schema: pa.Schema
    num_rows: int
    expires_at: float | None
    fingerprint: str
    filesystem: pafs.FileSystem

    def read(self, offset: int, count: int) -> pa.Table:
        """Rows ``[offset, offset + count)`` in spine order."""
        raise NotImplementedError

    def null_count(self, column: str) -> int:
        raise NotImplementedError


def public_schema(schema: pa.Schema) -> pa.Schema:
    """The spine's schema without what Quiver added to it."""
    metadata = {k: v for k, v in (schema.metadata or {}).items()
                if k not in (EXPIRES_KEY, BATCH_ROWS_KEY)}
    return schema.with_metadata(metadata) if metadata else schema.remove_metadata()
