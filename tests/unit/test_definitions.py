from __future__ import annotations

from datetime import timedelta

import pytest

from quiver import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    ParquetSource,
    String,
    ValueType,
    parse_feature_ref,
)
from quiver.errors import DefinitionError

user = Entity(name="user", join_keys=[Field("user_id", Int64)])


def view(**overrides: object) -> FeatureView:
    args: dict[str, object] = dict(
        name="stats",
        entities=[user],
        schema=[Field("count", Int64), Field("amount", Float64)],
        source=ParquetSource("stats"),
        ttl=timedelta(days=1),
    )
    args.update(overrides)
    return FeatureView(**args)  # type: ignore[arg-type]


def test_view_exposes_join_keys_and_features() -> None:
    v = view()
    assert v.join_key_names == ["user_id"]
    assert v.feature_names == ["count", "amount"]
    assert v.ttl_seconds == 86400


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "bad name"}, "feature view name 'bad name' is invalid"),
        ({"schema": [Field("a", Int64), Field("a", Int64)]}, "'a' appears more than once"),
        ({"schema": [Field("user_id", Int64)]}, "feature 'user_id' collides with a join key"),
        ({"schema": [Field("event_timestamp", Int64)]}, "collides with a join key or timestamp"),
        ({"ttl": timedelta(seconds=-1)}, "ttl must be a non-negative timedelta"),
        ({"ttl": timedelta(milliseconds=5)}, "whole number of seconds"),
        ({"entities": []}, "entities must name at least one entity"),
        ({"entities": ["user"]}, "entities must be Entity objects"),
        ({"schema": []}, "schema must declare at least one feature"),
    ],
)
def test_view_validation_names_the_problem(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(")):
        view(**overrides)


def test_field_type_must_be_known() -> None:
    with pytest.raises(DefinitionError, match="unknown value type 'decimal'; allowed: int64"):
        Field("price", "decimal")  # type: ignore[arg-type]
    assert Field("price", "float64").dtype is ValueType.FLOAT64  # type: ignore[arg-type]


def test_entity_key_types_are_limited() -> None:
    with pytest.raises(DefinitionError, match="join key 'k' has type float64; allowed: int64"):
        Entity(name="e", join_keys=[Field("k", Float64)])
    with pytest.raises(DefinitionError, match="at least one key"):
        Entity(name="e", join_keys=[])


def test_two_entities_cannot_share_a_join_key() -> None:
    other = Entity(name="other", join_keys=[Field("user_id", String)])
    with pytest.raises(DefinitionError, match="join key 'user_id' is declared by more than one"):
        view(entities=[user, other])


def test_projection_and_service() -> None:
    v = view()
    service = FeatureService(name="model", features=[v[["count"]], "stats:amount"])
    assert service.projections[0].view == "stats"
    assert service.projections[0].features == ("count", "amount")
    whole = FeatureService(name="all", features=[v])
    assert whole.projections[0].features == ()
    with pytest.raises(DefinitionError, match="has no feature 'nope'"):
        v[["nope"]]
    with pytest.raises(DefinitionError, match="must look like 'feature_view:feature'"):
        FeatureService(name="bad", features=["stats.count"])
    with pytest.raises(DefinitionError, match="at least one feature"):
        FeatureService(name="empty", features=[])


def test_parse_feature_ref() -> None:
    assert parse_feature_ref("v:f") == ("v", "f")
    for bad in ("v", ":f", "v:", "a:b:c"):
        with pytest.raises(ValueError, match="must look like"):
            parse_feature_ref(bad)


def test_equal_definitions_compare_equal() -> None:
    assert view() == view()
    assert view() != view(ttl=timedelta(days=2))
