"""A feature repo exercising every transform and both on-demand modes, written to disk.

Shared by the transform tests: definitions in ``features.py``, functions in
``fns.py`` (referenced by import path, as users do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DEFINITIONS = '''
from datetime import timedelta

from quiver import (
    Bool, Entity, FeatureService, FeatureView, Field, Float32, Float64, Int32, Int64,
    OnDemandFeatureView, ParquetSource, RequestSource, String,
)
from quiver import transforms as T

user = Entity(name="user", join_keys=[Field("user_id", Int64)])

nums = FeatureView(
    name="nums", entities=[user],
    schema=[
        Field("x_float", Float64), Field("x_int", Int64), Field("x_f32", Float32),
        Field("cat", String), Field("code", Int32), Field("flag", Bool),
    ],
    source=ParquetSource(path="nums", created_timestamp_field="created"),
    ttl=timedelta(days=2),
)
ages = FeatureView(
    name="ages", entities=[user], schema=[Field("y", Float64)],
    source=ParquetSource(path="ages"), ttl=timedelta(days=1),
)
txn = RequestSource(name="txn", schema=[Field("amount", Float64)])

arrow_odfv = OnDemandFeatureView(
    name="arrow_odfv",
    sources=[txn, nums[["x_float", "x_int"]]],
    schema=[
        Field("ratio", Float64), Field("amount_plus", Float64), Field("big", Bool),
        Field("doubled", Float64),
    ],
    function="fns:arrow_features",
)
pandas_odfv = OnDemandFeatureView(
    name="pandas_odfv",
    sources=[txn, nums[["x_f32"]], ages],
    schema=[Field("shifted", Float64)],
    function="fns:pandas_features",
    mode="pandas",
)

everything = FeatureService(
    name="everything",
    features=[nums, ages, arrow_odfv, pandas_odfv],
    transforms=[
        T.standard_scaler("nums:x_float"),
        T.robust_scaler("nums:x_int"),
        T.bucketize("nums:x_f32", boundaries=[-1.0, 0.0, 2.5]),
        T.label_encoder("nums:cat"),
        T.one_hot_encoder("nums:code"),
        T.min_max_scaler("ages:y"),
        T.log1p("arrow_odfv:ratio"),
        T.bucketize("arrow_odfv:amount_plus", num_buckets=3),
        # A scaler of an on-demand value, applied together with the stored ones.
        T.standard_scaler("arrow_odfv:doubled"),
        T.custom(
            "pandas_odfv:shifted", function="fns:clip", fit="fns:fit_clip",
            parameters={"lo": Float64, "hi": Float64}, output=Float64,
        ),
    ],
)
plain = FeatureService(name="plain", features=[nums, ages])
'''

FUNCTIONS = '''
import pyarrow as pa
import pyarrow.compute as pc


def arrow_features(inputs):
    amount = inputs["amount"]
    return {
        "ratio": pc.divide(amount, inputs["x_float"]),
        "amount_plus": pc.add(amount, inputs["x_int"].cast(pa.float64(), safe=False)),
        "big": pc.greater(amount, pa.scalar(100.0)),
        "doubled": pc.multiply(amount, pa.scalar(2.0)),
    }


def pandas_features(frame):
    frame["shifted"] = frame["amount"] - frame["x_f32"] * 2.0 + frame["y"].fillna(0.0)
    return frame


def clip(values, params):
    return pc.min_element_wise(pc.max_element_wise(values, params["lo"]), params["hi"])


def fit_clip(values):
    low, high = pc.min_max(pc.drop_null(values)).values()
    lo = low.as_py()
    hi = high.as_py()
    return {"lo": -1.0 if lo is None else lo, "hi": 1.0 if hi is None else hi}
'''

CONFIG = """project: transforms_test
registry: data/registry
offline_store:
  root: data
online_store:
  type: sqlite
  path: data/online.db
telemetry:
  metrics: {enabled: false}
  logging: {access_log: false, level: warning}
"""

NUMS_SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
    ("created", pa.timestamp("us", tz="UTC")), ("x_float", pa.float64()), ("x_int", pa.int64()),
    ("x_f32", pa.float32()), ("cat", pa.string()), ("code", pa.int32()), ("flag", pa.bool_()),
])
AGES_SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC")), ("y", pa.float64()),
])


def write_repo(
    path: Path, *, definitions: str = DEFINITIONS, functions: str = FUNCTIONS
) -> Path:
    """The repo's files, with empty history directories."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "quiver.yaml").write_text(CONFIG)
    (path / "features.py").write_text(definitions)
    (path / "fns.py").write_text(functions)
    for name in ("nums", "ages"):
        (path / "data" / name).mkdir(parents=True, exist_ok=True)
    return path


def write_history(
    repo: Path, nums: Sequence[Mapping[str, Any]], ages: Sequence[Mapping[str, Any]]
) -> None:
    """History rows (dicts with the schemas' columns); event times as datetimes."""
    pq.write_table(pa.Table.from_pylist(list(nums), NUMS_SCHEMA),
                   repo / "data" / "nums" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(list(ages), AGES_SCHEMA),
                   repo / "data" / "ages" / "part-0.parquet")


def spine(users: Sequence[int], amounts: Sequence[float], at: datetime) -> pa.Table:
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "event_timestamp": pa.array([at] * len(users), pa.timestamp("us", tz="UTC")),
        "amount": pa.array(amounts, pa.float64()),
    })
