"""One SparkSession (local[2]) for the whole test run; Spark tests skip without PySpark."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

pyspark = pytest.importorskip("pyspark", reason="PySpark is not installed (the `spark` extra)")

# Settings that keep a local test session small and quiet.
TEST_SPARK_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.driver.memory": "1g",
    "spark.sql.autoBroadcastJoinThreshold": "10485760",
}


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """The test run's SparkSession; Quiver's engines find it as the active session."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.master("local[2]").appName("quiver-tests")
    for key, value in TEST_SPARK_CONF.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
