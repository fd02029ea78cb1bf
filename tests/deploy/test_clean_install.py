"""A non-editable `pip install .` (no extras) in a fresh virtualenv runs both servers.

The development environment has the dev extras and everything they pull in, so it
cannot show that the distribution declares all it needs. This builds the wheel,
installs it with its declared dependencies only (from the package index, as a
user would), and runs the same smoke test the Docker build runs: `quiver serve`
and `quiver serve-flight` start on a demo repo and answer.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from .helmkit import ROOT


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_in_a_fresh_virtualenv_runs_both_servers(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = wheels.glob("quiver_feature_store-*.whl")
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # Nothing of the development environment leaks in: not editable, no dev tools.
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout
    assert "quiver-feature-store==0.1.0" in listed and "pytest==" not in listed
    smoke = subprocess.run(
        [str(python), str(ROOT / "scripts" / "smoke_servers.py"),
         "--quiver", str(env_dir / "bin" / "quiver"), "--timeout", "120"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "smoke test passed" in smoke.stdout
