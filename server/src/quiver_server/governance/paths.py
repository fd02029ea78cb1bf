"""Where governance records live.

Under the registry directory (shared by every server, like the registry)::

    governance/datasets/<name>/v00000001.pb     training dataset versions (immutable)
    governance/datasets/<name>/v00000001.erased-<id>   erasures that touched its spine
    governance/erasures/log.jsonl               append-only erasure log
    governance/erasures/pending/<id>.json       erasures not yet completed
    governance/erasures/key                     key of the entity-key hashes
    governance/compactions/log.jsonl            append-only compaction log
    governance/compactions/pending/<id>.json    compactions not yet completed
    governance/materializations.jsonl           materialization runs and windows
    governance/locks/<view>.lock                one writer per view's history
    governance/locks/<view>.backfill.lock       one backfill per view
    governance/datasets.lock                    dataset creation vs. erasure marking

Under the offline store root, with the data::

    _datasets/<name>/<id>.arrow                  kept spines of training datasets
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quiver_server.config import QuiverConfig

DATASET_SPINES = "_datasets"


@dataclass(frozen=True)
class GovernancePaths:
    """The governance layout of one repo."""

    registry: Path
    offline_root: str

    @classmethod
    def of(cls, config: QuiverConfig) -> GovernancePaths:
        return cls(Path(config.registry_path), config.offline_root)

    @property
    def root(self) -> Path:
        return self.registry / "governance"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def erasure_log(self) -> Path:
        return self.root / "erasures" / "log.jsonl"

    @property
    def erasures_pending(self) -> Path:
        return self.root / "erasures" / "pending"

    @property
    def erasure_key(self) -> Path:
        return self.root / "erasures" / "key"

    @property
    def compaction_log(self) -> Path:
        return self.root / "compactions" / "log.jsonl"

    @property
    def compactions_pending(self) -> Path:
        return self.root / "compactions" / "pending"

    @property
    def materializations(self) -> Path:
        return self.root / "materializations.jsonl"

    @property
    def datasets_lock(self) -> Path:
        """Held shared while a dataset is recorded, exclusive while an erasure marks datasets."""
        return self.root / "datasets.lock"

    def view_lock(self, view: str) -> Path:
        return self.root / "locks" / f"{view}.lock"

    def backfill_lock(self, view: str) -> Path:
        """Held by a backfill of `view` from start to end: one at a time."""
        return self.root / "locks" / f"{view}.backfill.lock"
