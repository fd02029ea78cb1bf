"""A sample fraud-detection feature repo with generated Parquet history.

`quiver init-demo DIR` writes it; the README's main job and the benchmarks use
it. History ends at the time it is written, so the values are fresh when read.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DEFINITIONS = '''"""Feature definitions of the fraud-detection demo."""

from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc

from quiver import (
    Bool, DriftThresholds, Entity, FeatureService, FeatureView, Field, Float64, Int32, Int64,
    OnDemandFeatureView, ParquetSource, RequestSource, String,
)
from quiver import transforms as T

user = Entity(
    name="user",
    join_keys=[Field("user_id", Int64)],
    description="A card holder.",
    owner="risk-team@example.com",
)
merchant = Entity(
    name="merchant",
    join_keys=[Field("merchant_id", Int64)],
    description="A business accepting card payments.",
    owner="risk-team@example.com",
)

user_transaction_stats = FeatureView(
    name="user_transaction_stats",
    entities=[user],
    schema=[
        Field("txn_count_1h", Int64),
        Field("txn_count_24h", Int64),
        Field("txn_count_7d", Int64),
        Field("txn_amount_sum_24h", Float64),
        Field("txn_amount_avg_7d", Float64),
        Field("txn_amount_max_7d", Float64),
        Field("distinct_merchants_7d", Int32),
        Field("declined_count_7d", Int64),
        Field("last_txn_country", String),
    ],
    source=ParquetSource(
        path="user_transaction_stats",
        timestamp_field="event_timestamp",
        created_timestamp_field="created",
    ),
    ttl=timedelta(days=2),
    description="Rolling transaction aggregates per user, computed hourly.",
    owner="risk-team@example.com",
    tags={"tier": "gold"},
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    schema=[
        Field("age", Int32),
        Field("account_age_days", Int64),
        # Missing credit scores hurt the model: alert on a 2-point change.
        Field("credit_score", Int32, drift=DriftThresholds(null_rate=0.02)),
        Field("is_verified", Bool),
        Field("country", String),
        Field("signup_channel", String),
    ],
    source=ParquetSource(path="user_profile", timestamp_field="event_timestamp"),
    ttl=timedelta(0),
    description="Slowly changing profile attributes.",
    owner="identity-team@example.com",
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    schema=[
        Field("merchant_category", String),
        Field("chargeback_rate_30d", Float64),
        Field("merchant_txn_count_24h", Int64),
        Field("avg_ticket_30d", Float64),
        Field("is_high_risk", Bool),
    ],
    source=ParquetSource(path="merchant_stats", timestamp_field="event_timestamp"),
    ttl=timedelta(days=7),
    description="Merchant risk aggregates, computed daily.",
    owner="risk-team@example.com",
    # A few hundred merchants per window: small samples vary more, so drift
    # must be larger before it counts.
    drift=DriftThresholds(psi=0.5, jensen_shannon=0.3),
)

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[user_transaction_stats, user_profile, merchant_stats],
    description="Every feature the card fraud model reads.",
    owner="ml-platform@example.com",
)

transaction = RequestSource(
    name="transaction",
    schema=[Field("amount", Float64)],
    description="The card transaction being scored, sent with the lookup.",
)


def amount_features(inputs: pa.RecordBatch) -> dict[str, pa.Array]:
    """The transaction's amount against the user's 7-day average (vectorized, row-wise)."""
    return {"amount_to_avg_7d": pc.divide(inputs["amount"], inputs["txn_amount_avg_7d"])}


txn_amount_features = OnDemandFeatureView(
    name="txn_amount_features",
    sources=[transaction, user_transaction_stats[["txn_amount_avg_7d"]]],
    schema=[Field("amount_to_avg_7d", Float64)],
    function="features:amount_features",
    description="Computed per lookup from the request's amount and stored 7-day aggregates.",
    owner="risk-team@example.com",
)

fraud_model_scaled = FeatureService(
    name="fraud_model_scaled",
    features=[
        user_transaction_stats, user_profile, merchant_stats,
        txn_amount_features,
    ],
    transforms=[
        T.standard_scaler("user_transaction_stats:txn_count_24h"),
        T.standard_scaler("user_transaction_stats:txn_amount_sum_24h"),
        T.standard_scaler("user_transaction_stats:txn_amount_avg_7d"),
        T.standard_scaler("user_profile:credit_score"),
        T.standard_scaler("merchant_stats:chargeback_rate_30d"),
    ],
    description="The fraud model's 20 features with 5 standardized, plus the on-demand amount ratio.",
    owner="ml-platform@example.com",
)

user_risk = FeatureService(
    name="user_risk",
    features=[
        user_transaction_stats[["txn_count_24h", "txn_amount_sum_24h", "declined_count_7d"]],
        user_profile[["credit_score", "is_verified"]],
    ],
    description="A small user-only model.",
)
'''

PERMISSIONS = '''"""Who may do what (enforced when auth is on in quiver.yaml; docs/security.md)."""

from quiver import Action, Permission, Resource

# The fraud model reads its feature service online, and nothing else.
fraud_model_reads = Permission(
    name="fraud_model_reads",
    principals=["fraud-model"],
    actions=[Action.READ_ONLINE],
    resources=[Resource.feature_service("fraud_model_v1")],
)

# The streaming job keeps user_transaction_stats fresh, online and in history.
txn_stats_pipeline = Permission(
    name="txn_stats_pipeline",
    principals=["txn-stats-pipeline"],
    actions=[Action.WRITE_ONLINE, Action.WRITE_OFFLINE],
    resources=[Resource.feature_view("user_transaction_stats")],
)

# Data scientists browse the registry and pull training sets of anything.
data_scientists = Permission(
    name="data_scientists",
    groups=["data-scientists"],
    actions=[Action.DESCRIBE, Action.READ_OFFLINE],
    resources=[Resource.project()],
)
'''

CONFIG = """project: fraud_detection
description: Card fraud detection features (Quiver demo).
registry: data/registry
offline_store:
  root: data
online_store:
  type: sqlite
  path: data/online.db
serving:
  port: 6566
flight:
  port: 8815
"""

COUNTRIES = ["US", "GB", "DE", "FR", "BR", "IN", "JP", "NG", "CA", "MX"]
CATEGORIES = ["grocery", "travel", "electronics", "gaming", "fuel", "restaurants", "fashion"]


def write_demo_repo(
    path: str | Path,
    users: int = 1000,
    merchants: int = 200,
    days: int = 14,
    end: datetime | None = None,
    seed: int = 7,
) -> Path:
    """Write quiver.yaml, features.py, permissions.py and Parquet history under `path`."""
    repo = Path(path)
    data = repo / "data"
    for name in ("user_transaction_stats", "user_profile", "merchant_stats"):
        (data / name).mkdir(parents=True, exist_ok=True)
    (repo / "quiver.yaml").write_text(CONFIG)
    (repo / "features.py").write_text(DEFINITIONS)
    (repo / "permissions.py").write_text(PERMISSIONS)
    end = (end or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    rng = random.Random(seed)
    _user_transaction_stats(data, rng, users, days, end)
    _user_profile(data, rng, users, end - timedelta(days=days))
    _merchant_stats(data, rng, merchants, days, end)
    return repo


def _ts(values: list[datetime]) -> pa.Array:
    return pa.array(values, type=pa.timestamp("us", tz="UTC"))


def _user_transaction_stats(data: Path, rng: random.Random, users: int, days: int, end: datetime) -> None:
    # One row per user every 6 hours; the last one lands within the 2-day ttl.
    steps = days * 4
    rows: dict[str, list[object]] = {k: [] for k in (
        "user_id", "event_timestamp", "created", "txn_count_1h", "txn_count_24h", "txn_count_7d",
        "txn_amount_sum_24h", "txn_amount_avg_7d", "txn_amount_max_7d", "distinct_merchants_7d",
        "declined_count_7d", "last_txn_country")}
    for user_id in range(1, users + 1):
        activity = rng.uniform(0.2, 4.0)
        for step in range(steps):
            event = end - timedelta(hours=6 * (steps - step)) + timedelta(minutes=rng.randrange(60))
            count_24h = int(rng.expovariate(1 / (activity * 3)))
            avg = round(rng.lognormvariate(3.5, 0.8), 2)
            rows["user_id"].append(user_id)
            rows["event_timestamp"].append(event)
            rows["created"].append(event + timedelta(minutes=5))
            rows["txn_count_1h"].append(min(count_24h, int(rng.expovariate(1 / activity))))
            rows["txn_count_24h"].append(count_24h)
            rows["txn_count_7d"].append(count_24h * 7 + rng.randrange(5))
            rows["txn_amount_sum_24h"].append(round(avg * count_24h, 2))
            rows["txn_amount_avg_7d"].append(avg)
            rows["txn_amount_max_7d"].append(round(avg * rng.uniform(1, 6), 2))
            rows["distinct_merchants_7d"].append(rng.randrange(1, 30))
            rows["declined_count_7d"].append(int(rng.expovariate(2)))
            rows["last_txn_country"].append(None if count_24h == 0 else rng.choice(COUNTRIES))
    table = pa.table({
        "user_id": pa.array(rows["user_id"], pa.int64()),
        "event_timestamp": _ts(rows["event_timestamp"]),  # type: ignore[arg-type]
        "created": _ts(rows["created"]),  # type: ignore[arg-type]
        "txn_count_1h": pa.array(rows["txn_count_1h"], pa.int64()),
        "txn_count_24h": pa.array(rows["txn_count_24h"], pa.int64()),
        "txn_count_7d": pa.array(rows["txn_count_7d"], pa.int64()),
        "txn_amount_sum_24h": pa.array(rows["txn_amount_sum_24h"], pa.float64()),
        "txn_amount_avg_7d": pa.array(rows["txn_amount_avg_7d"], pa.float64()),
        "txn_amount_max_7d": pa.array(rows["txn_amount_max_7d"], pa.float64()),
        "distinct_merchants_7d": pa.array(rows["distinct_merchants_7d"], pa.int32()),
        "declined_count_7d": pa.array(rows["declined_count_7d"], pa.int64()),
        "last_txn_country": pa.array(rows["last_txn_country"], pa.string()),
    })
    pq.write_table(table, data / "user_transaction_stats" / "part-0.parquet", row_group_size=50_000)


def _user_profile(data: Path, rng: random.Random, users: int, start: datetime) -> None:
    user_ids = list(range(1, users + 1))
    table = pa.table({
        "user_id": pa.array(user_ids, pa.int64()),
        "event_timestamp": _ts([start + timedelta(minutes=rng.randrange(600)) for _ in user_ids]),
        "age": pa.array([rng.randrange(18, 90) for _ in user_ids], pa.int32()),
        "account_age_days": pa.array([rng.randrange(1, 4000) for _ in user_ids], pa.int64()),
        "credit_score": pa.array(
            [None if rng.random() < 0.05 else rng.randrange(300, 850) for _ in user_ids], pa.int32()
        ),
        "is_verified": pa.array([rng.random() < 0.8 for _ in user_ids], pa.bool_()),
        "country": pa.array([rng.choice(COUNTRIES) for _ in user_ids], pa.string()),
        "signup_channel": pa.array([rng.choice(["web", "ios", "android", "branch"]) for _ in user_ids]),
    })
    pq.write_table(table, data / "user_profile" / "part-0.parquet")


def _merchant_stats(data: Path, rng: random.Random, merchants: int, days: int, end: datetime) -> None:
    ids: list[int] = []
    events: list[datetime] = []
    for merchant_id in range(1, merchants + 1):
        for day in range(days):
            ids.append(merchant_id)
            events.append(end - timedelta(days=days - day) + timedelta(hours=rng.randrange(24)))
    n = len(ids)
    table = pa.table({
        "merchant_id": pa.array(ids, pa.int64()),
        "event_timestamp": _ts(events),
        "merchant_category": pa.array([CATEGORIES[i % len(CATEGORIES)] for i in ids]),
        "chargeback_rate_30d": pa.array([round(rng.betavariate(1, 60), 5) for _ in range(n)]),
        "merchant_txn_count_24h": pa.array([rng.randrange(0, 5000) for _ in range(n)], pa.int64()),
        "avg_ticket_30d": pa.array([round(rng.lognormvariate(3.8, 0.6), 2) for _ in range(n)]),
        "is_high_risk": pa.array([rng.random() < 0.07 for _ in range(n)]),
    })
    pq.write_table(table, data / "merchant_stats" / "part-0.parquet")


SHIFTED_FEATURE = "txn_amount_avg_7d"


def write_shifted_batch(
    path: str | Path,
    feature: str = SHIFTED_FEATURE,
    factor: float = 3.0,
    at: datetime | None = None,
) -> Path:
    """Append a batch of `user_transaction_stats` rows in which one feature shifted.

    Every user gets a new row at `at` (default: 30 minutes ago) copying their
    latest values, with `feature` multiplied by `factor`, as an upstream bug or
    a real change in behaviour would. Materializing it and running
    `quiver monitor` shows the drift on that feature only.

    Returns:
        The Parquet file written.
    """
    directory = Path(path) / "data" / "user_transaction_stats"
    history = pq.read_table(directory / "part-0.parquet")
    order = pc.sort_indices(history, [("user_id", "ascending"), ("event_timestamp", "descending")])
    history = history.take(order)
    users = history.column("user_id")
    first = pc.not_equal(users.slice(1), users.slice(0, len(users) - 1))
    latest = history.filter(pa.concat_arrays([pa.array([True]), first.combine_chunks()]))
    when = (at or datetime.now(UTC) - timedelta(minutes=30)).astimezone(UTC)
    n = latest.num_rows
    latest = latest.set_column(
        latest.schema.get_field_index("event_timestamp"), "event_timestamp", _ts([when] * n)
    )
    latest = latest.set_column(
        latest.schema.get_field_index("created"), "created", _ts([when + timedelta(minutes=1)] * n)
    )
    index = latest.schema.get_field_index(feature)
    latest = latest.set_column(index, feature, pc.multiply(latest.column(feature), factor))
    out = directory / "shifted-batch.parquet"
    pq.write_table(latest, out)
    return out
