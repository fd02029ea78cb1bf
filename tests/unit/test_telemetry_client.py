"""The client's tracing switch: opt-in, and no OpenTelemetry dependency unless used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from quiver.tracing import split_target

# Makes `import opentelemetry` fail, as on a machine where it is not installed.
_WITHOUT_OTEL = """
import sys

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, _Blocker())
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WITHOUT_OTEL + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_client_works_without_opentelemetry() -> None:
    result = run("""
        import quiver
        from quiver import OnlineClient
        OnlineClient("127.0.0.1:1").close()
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
    """)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_tracing_without_opentelemetry_says_what_to_install() -> None:
    result = run("""
        from quiver import OnlineClient
        try:
            OnlineClient("127.0.0.1:1", tracing=True)
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("expected ImportError")
    """)
    assert result.returncode == 0, result.stderr
    assert "pip install opentelemetry-api" in result.stdout


@pytest.mark.slow
def test_importing_quiver_does_not_import_opentelemetry() -> None:
    code = "import sys, quiver; print([m for m in sys.modules if m.startswith('opentelemetry')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize(("target", "expected"), [
    ("localhost:6566", ("localhost", 6566)),
    ("dns:///serving.fraud:6566", ("serving.fraud", 6566)),
    ("[::1]:6566", ("::1", 6566)),
    ("unix:/tmp/sock", ("unix:/tmp/sock", None)),
])
def test_split_target(target: str, expected: tuple[str, int | None]) -> None:
    assert split_target(target) == expected
