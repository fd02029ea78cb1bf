"""The README's main job (`make demo`), end to end, in real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    # Metrics on a free port: the default one may be taken on a shared machine.
    env = {**os.environ, "QUIVER_TELEMETRY__METRICS__PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--repo", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Applied: registry version 1" in out
    assert "user_id=1 merchant_id=10" in out
    assert "txn_count_24h" in out and "merchant_category" in out
    # The unknown user is reported, not invented.
    assert "[NOT_FOUND]" in out
    assert "quiver serve stopped cleanly (exit code 0)" in out
    assert "Training set (point-in-time correct" in out
    assert "user_id=999999  merchant_id=30  is_fraud=False  txn_count_24h=None" in out
    assert "quiver serve-flight stopped cleanly (exit code 0)" in out
