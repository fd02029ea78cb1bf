"""The answer to an online lookup, column by column."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from quiver.convert import from_values
from quiver.serving.v1 import serving_service_pb2 as pb
from quiver.types import ValueType

if TYPE_CHECKING:
    import pandas as pd

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATUS_NAMES = {
    pb.FEATURE_STATUS_PRESENT: "PRESENT",
    pb.FEATURE_STATUS_NULL_VALUE: "NULL_VALUE",
    pb.FEATURE_STATUS_NOT_FOUND: "NOT_FOUND",
    pb.FEATURE_STATUS_OUTSIDE_MAX_AGE: "OUTSIDE_MAX_AGE",
}


class OnlineResponse:
    """Feature values for each requested entity, in request order.

    Values whose status is not PRESENT read as None. `statuses(name)` and
    `event_timestamps(name)` give the status and event time of every value.
    """

    def __init__(self, proto: pb.GetOnlineFeaturesResponse, entities: dict[str, list[Any]]) -> None:
        self.proto = proto
        self._entities = entities

    @property
    def transform_version(self) -> int:
        """Parameter set version the feature service's transforms used (0: none)."""
        return int(self.proto.transform_version)

    @property
    def feature_names(self) -> list[str]:
        return list(self.proto.feature_names)

    def __len__(self) -> int:
        return int(self.proto.entity_count)

    def _column(self, name: str) -> pb.FeatureColumn:
        try:
            index = list(self.proto.feature_names).index(name)
        except ValueError:
            raise KeyError(f"no feature {name!r}; have {self.feature_names}") from None
        return self.proto.columns[index]

    def values(self, name: str) -> list[Any]:
        """A feature's values; None where the status is not PRESENT."""
        column = self._column(name)
        dtype, raw = from_values(column.values)
        present = pb.FEATURE_STATUS_PRESENT
        out = [v if s == present else None for v, s in zip(raw, column.statuses, strict=True)]
        if dtype == ValueType.TIMESTAMP:
            return [None if v is None else _EPOCH + timedelta(microseconds=v) for v in out]
        return out

    def statuses(self, name: str) -> list[str]:
        """PRESENT, NULL_VALUE, NOT_FOUND or OUTSIDE_MAX_AGE for each value."""
        return [_STATUS_NAMES.get(s, "UNSPECIFIED") for s in self._column(name).statuses]

    def event_timestamps(self, name: str) -> list[datetime | None]:
        """Event time (UTC) of each value; None where the entity was not found."""
        return [
            _EPOCH + timedelta(microseconds=ts) if ts else None
            for ts in self._column(name).event_timestamps
        ]

    def to_dict(self) -> dict[str, list[Any]]:
        """Entity key columns followed by one list per feature."""
        out: dict[str, list[Any]] = {k: list(v) for k, v in self._entities.items()}
        for name in self.proto.feature_names:
            out[name] = self.values(name)
        return out

    def to_arrow(self, include_metadata: bool = False) -> pa.Table:
        """An Arrow table; with `include_metadata`, `<name>__status` and `<name>__timestamp` columns."""
        arrays: list[pa.Array] = []
        names: list[str] = []
        for key, values in self._entities.items():
            arrays.append(pa.array(values))
            names.append(key)
        for name, column in zip(self.proto.feature_names, self.proto.columns, strict=True):
            dtype, _ = from_values(column.values)
            arrow_type = dtype.arrow_type if dtype is not None else pa.null()
            arrays.append(pa.array(self.values(name), type=arrow_type))
            names.append(name)
            if include_metadata:
                arrays.append(pa.array(self.statuses(name), type=pa.string()))
                names.append(f"{name}__status")
                arrays.append(
                    pa.array(self.event_timestamps(name), type=pa.timestamp("us", tz="UTC"))
                )
                names.append(f"{name}__timestamp")
        return pa.Table.from_arrays(arrays, names=names)

    def to_pandas(self, include_metadata: bool = False) -> pd.DataFrame:
        """A pandas DataFrame (needs pandas installed)."""
        return self.to_arrow(include_metadata).to_pandas()

    def __repr__(self) -> str:
        return f"OnlineResponse(entities={len(self)}, features={self.feature_names})"


def as_list(values: Sequence[Any]) -> list[Any]:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return list(values.to_pylist())
    if hasattr(values, "tolist"):
        return list(values.tolist())
    return list(values)
