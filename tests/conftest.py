"""Fixtures shared by every test layer: sample feature repos on disk."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quiver_server.config import QuiverConfig, load_config
from quiver_server.demo_repo import write_demo_repo

# A fixed end keeps generated history reproducible; tests that read online data
# materialize a copy whose end is "now" instead.
FIXED_END = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def demo_repo(tmp_path: Path) -> Path:
    """The demo fraud repo, small, with history ending now (not yet applied)."""
    return write_demo_repo(tmp_path / "repo", users=50, merchants=10, days=3)


@pytest.fixture
def demo_config(demo_repo: Path) -> QuiverConfig:
    return load_config(demo_repo, env={})


@pytest.fixture
def applied_demo(demo_config: QuiverConfig) -> Iterator[QuiverConfig]:
    from quiver_server.repo import apply

    apply(demo_config)
    yield demo_config


@pytest.fixture
def materialized(applied_demo: QuiverConfig) -> QuiverConfig:
    """The applied demo repo with its history materialized into the online store."""
    from datetime import timedelta

    from quiver_server.materialize import materialize_range

    end = datetime.now(UTC) + timedelta(seconds=1)
    materialize_range(applied_demo, end - timedelta(days=30), end)
    return applied_demo
