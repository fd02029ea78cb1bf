"""The one SparkSession a Quiver process uses, built from `offline_store.spark`.

Either Quiver starts a session itself (`spark.master`: ``local[N]``, a
standalone master, ``k8s://...``) or it connects to a Spark Connect server
(`spark.remote`). `spark.conf` is passed through as it is. A few SQL settings
are Quiver's and are set on every job's session, because the engines' results
depend on them:

- the session time zone is UTC, so naive history timestamps read as UTC (as
  the local engine reads them);
- Parquet nanosecond timestamps are read as int64 nanoseconds, so nanosecond
  event and created times compare at their own precision;
- column names are case sensitive, as Arrow's are;
- timestamps are written as Parquet TIMESTAMP_MICROS, not the legacy INT96.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import TYPE_CHECKING

import structlog

from quiver.errors import FailedPreconditionError, UnavailableError
from quiver_server.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

QUIVER_SQL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.caseSensitive": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.ansi.enabled": "true",
}
# Settings of a session Quiver starts itself (not applicable to Spark Connect).
_STARTUP_CONF = {
    "spark.ui.showConsoleProgress": "false",
}

_lock = threading.Lock()
log = structlog.get_logger(__name__)


def spark_session(config: SparkConfig) -> SparkSession:
    """The process's SparkSession: the active one, or a new one from `config`.

    Raises:
        FailedPreconditionError: PySpark is not installed.
        UnavailableError: the session cannot be started or reached (the JVM did
            not start, the master or Spark Connect server does not answer); the
            next call tries again.
    """
    try:
        with warnings.catch_warnings():
            # PySpark 4.3 warns on import that it is untested with pandas 3 (the extra's pin);
            # Quiver's jobs exchange Arrow, not pandas.
            warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas")
            from py4j.protocol import Py4JError
            from pyspark.errors import PySparkException
            from pyspark.sql import SparkSession
    except ImportError:
        raise FailedPreconditionError(
            "offline_store.engine is 'spark' but PySpark is not installed; install the extra: "
            "pip install 'quiver-feature-store[spark]'",
            reason="SPARK_NOT_INSTALLED",
        ) from None
    with _lock:
        if config.remote:
            builder = SparkSession.builder.remote(config.remote)
        else:
            builder = SparkSession.builder.master(config.master)
            for key, value in _STARTUP_CONF.items():
                builder = builder.config(key, value)
            if config.master.startswith("local"):
                # Local executors run this interpreter, which has Quiver installed
                # (PySpark reads the variable, not spark.pyspark.python, for them).
                os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.appName(config.app_name)
        for key, value in config.conf.items():
            builder = builder.config(key, value)
        try:
            session = builder.getOrCreate()
            for key, value in QUIVER_SQL_CONF.items():
                session.conf.set(key, value)
        except (PySparkException, Py4JError, OSError) as exc:
            where = f"spark.remote {config.remote!r}" if config.remote else \
                f"spark.master {config.master!r}"
            # The cause may hold paths and hosts: it goes to the log, not the caller.
            log.error("Spark session not available", target=where, exc_info=exc)
            raise UnavailableError(
                f"the Spark engine is unavailable: no Spark session could be started or reached "
                f"({where} under offline_store.spark); the server log has the cause; retry",
                reason="SPARK_UNAVAILABLE",
            ) from None
    return session
