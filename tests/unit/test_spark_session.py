"""A Spark session that cannot start is UNAVAILABLE, named by its setting, not an internal error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("pyspark", reason="PySpark is not installed (the `spark` extra)")

SCRIPT = """
from quiver.errors import UnavailableError
from quiver_server.config import SparkConfig
from quiver_server.spark.session import spark_session
try:
    spark_session(SparkConfig(master="local[1]"))
except UnavailableError as exc:
    print("RESULT", exc.reason, exc.message)
"""


def test_a_session_whose_jvm_cannot_start_is_unavailable() -> None:
    # A Java that is not there: the JVM never starts (a process of its own, so the
    # test run's one session is untouched).
    env = {**os.environ, "JAVA_HOME": "/nonexistent-java", "PATH": "/usr/bin:/bin"}
    env.pop("SPARK_HOME", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    [line] = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    reason, _, message = line.removeprefix("RESULT ").partition(" ")
    assert reason == "SPARK_UNAVAILABLE", done.stdout + done.stderr
    assert "spark.master 'local[1]'" in message and "/nonexistent" not in message
