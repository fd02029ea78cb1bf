"""The README's main job (`make demo`), end to end, in real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--repo", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=180,
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
    # The scaled service: fitted, served with the on-demand ratio, and its
    # training rows equal the online answer.
    assert "Fitted feature service 'fraud_model_scaled' on 2,000 rows" in out
    assert "Feature service fraud_model_scaled (transform parameters version 1)" in out
    assert "amount_to_avg_7d" in out
    assert "All 21 columns identical to the online answer: True" in out
