"""quiver backfill on the Spark engine writes the same history as the local engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from test_backfill import D0, DAY, write_repo, write_transactions

from quiver_server.backfill import backfill
from quiver_server.registry.store import RegistryStore
from quiver_server.repo import apply

# A first Spark test also starts the JVM of the run's one session.
pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]


def test_spark_and_local_backfills_write_the_same_history(spark: Any, tmp_path: Path) -> None:
    histories = {}
    for engine in ("local", "spark"):
        config = write_repo(tmp_path / engine)
        write_transactions(config)
        apply(config)
        for view in ("user_spend", "user_daily"):
            result = backfill(config, view, D0 + DAY, D0 + 3 * DAY, engine=engine)
            assert result.rows > 0 and result.version == 1
            path = RegistryStore(config.registry_path).latest().feature_view(view).source.path
            histories[engine, view] = pq.read_table(Path(config.offline_root) / path)
        assert backfill(config, "user_spend", D0 + DAY, D0 + 2 * DAY, engine=engine).windows == []
    for view in ("user_spend", "user_daily"):
        local, spark_rows = histories["local", view], histories["spark", view]
        assert spark_rows.schema == local.schema
        if view == "user_spend":  # SQL: ordered by time and keys on both engines
            assert spark_rows.equals(local)
        else:  # a function keeps its input's order, which Spark partitions
            key = sorted(local.column_names)
            assert sorted(spark_rows.select(key).to_pylist(), key=str) == sorted(
                local.select(key).to_pylist(), key=str
            )
