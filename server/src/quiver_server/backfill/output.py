"""What a transformation must produce, and the query wrapped around a user's SQL.

The same wrapper runs on DuckDB (local engine) and Spark SQL: it selects the
view's columns by name, casts them to the declared types, keeps the rows of
the backfilled window and orders them by time, keys and then every other
column, so every engine writes the same rows in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from quiver import BatchTransformation, FeatureView, ValueType
from quiver.errors import DefinitionError
from quiver_server.offline.columns import cast_column, compatible
from quiver_server.times import micros

_DUCKDB_TYPES = {
    ValueType.INT64: "BIGINT", ValueType.INT32: "INTEGER", ValueType.FLOAT64: "DOUBLE",
    ValueType.FLOAT32: "FLOAT", ValueType.BOOL: "BOOLEAN", ValueType.STRING: "VARCHAR",
    ValueType.BYTES: "BLOB", ValueType.TIMESTAMP: "TIMESTAMPTZ",
}
_SPARK_TYPES = {
    ValueType.INT64: "BIGINT", ValueType.INT32: "INT", ValueType.FLOAT64: "DOUBLE",
    ValueType.FLOAT32: "FLOAT", ValueType.BOOL: "BOOLEAN", ValueType.STRING: "STRING",
    ValueType.BYTES: "BINARY", ValueType.TIMESTAMP: "TIMESTAMP",
}


@dataclass(frozen=True)
class OutputColumn:
    name: str
    dtype: ValueType
    role: str  # "join key", "timestamp field", "created timestamp field", "feature"


def output_columns(view: FeatureView, transformation: BatchTransformation) -> list[OutputColumn]:
    """The columns the view's history holds, in file order."""
    columns = [OutputColumn(k.name, k.dtype, "join key") for k in view.join_keys]
    columns.append(OutputColumn(transformation.timestamp_field, ValueType.TIMESTAMP, "timestamp field"))
    if transformation.created_timestamp_field:
        columns.append(OutputColumn(
            transformation.created_timestamp_field, ValueType.TIMESTAMP, "created timestamp field"
        ))
    columns.extend(OutputColumn(f.name, f.dtype, "feature") for f in view.schema)
    return columns


def output_schema(columns: Sequence[OutputColumn]) -> pa.Schema:
    return pa.schema([(c.name, c.dtype.arrow_type) for c in columns])


def wrap_sql(
    sql: str, columns: Sequence[OutputColumn], start: datetime, end: datetime, *, dialect: str
) -> str:
    """The user's query as the view's history rows of ``[start, end)``, ordered."""
    quote = "`" if dialect == "spark" else '"'
    types = _SPARK_TYPES if dialect == "spark" else _DUCKDB_TYPES
    epoch_us = "unix_micros" if dialect == "spark" else "epoch_us"

    def name(column: str) -> str:
        return f"{quote}{column}{quote}"

    select = ", ".join(f"CAST({name(c.name)} AS {types[c.dtype]}) AS {name(c.name)}" for c in columns)
    time = next(c.name for c in columns if c.role == "timestamp field")
    keys = [c.name for c in columns if c.role == "join key"]
    rest = [c.name for c in columns if c.name != time and c.name not in keys]
    event = f"{epoch_us}(CAST({name(time)} AS {types[ValueType.TIMESTAMP]}))"
    body = sql.strip().rstrip(";")
    # By every column, nulls placed alike (the engines' defaults differ): rows with the
    # same key and times are ordered too, and the last one in the file is the one a
    # point-in-time join and materialization pick.
    order = ", ".join(f"{name(c)} NULLS FIRST" for c in [time, *keys, *rest])
    return (
        f"SELECT {select} FROM ({body}) AS quiver_output "
        f"WHERE {event} >= {micros(start)} AND {event} < {micros(end)} "
        f"ORDER BY {order}"
    )


def check_output(view: FeatureView, columns: Sequence[OutputColumn], schema: pa.Schema) -> None:
    """Check a transformation's output schema against the view.

    Raises:
        DefinitionError: naming the view, the column and what is wrong.
    """
    for column in columns:
        index = schema.get_field_index(column.name)
        if index < 0:
            raise DefinitionError(
                f"feature view {view.name!r}: its transformation produces no column "
                f"{column.name!r} ({column.role}); it produces: {', '.join(schema.names)}"
            )
        found = schema.field(index).type
        if not compatible(column.dtype, found) and not pa.types.is_null(found):
            raise DefinitionError(
                f"feature view {view.name!r}: its transformation's column {column.name!r} "
                f"({column.role}) is {found}, expected {column.dtype.name.lower()}"
            )


def conform(view: FeatureView, columns: Sequence[OutputColumn], batch: pa.RecordBatch) -> pa.Table:
    """A function's output batch as the view's history columns (checked, then cast)."""
    check_output(view, columns, batch.schema)
    arrays = []
    for column in columns:
        values = batch.column(column.name)
        arrays.append(
            pa.nulls(len(values), column.dtype.arrow_type) if pa.types.is_null(values.type)
            else cast_column(values, column.dtype)
        )
    return pa.Table.from_arrays(arrays, schema=output_schema(columns))
