"""Checks `quiver apply` makes of every transformation, before anything is stored.

A function must import and be callable. SQL must parse; when every input
exists, it is bound against the inputs' schemas (no rows are read) with the
wrapper a backfill uses, so a missing output column or an unknown input
column is reported now rather than at the first backfill.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from quiver import FeatureView
from quiver.errors import DefinitionError, FailedPreconditionError
from quiver_server.backfill.local import load_function, raw_dataset
from quiver_server.backfill.output import check_output, output_columns, wrap_sql
from quiver_server.config import QuiverConfig

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_transformations(
    views: Mapping[str, FeatureView], config: QuiverConfig, origin: Mapping[str, str]
) -> None:
    """Check each view's transformation.

    Args:
        views: Feature views by name.
        config: The repo's configuration (offline root, repo directory).
        origin: The file each view was defined in, for messages.

    Raises:
        DefinitionError: naming the file, the view and the problem.
    """
    for name, view in views.items():
        if view.transformation is None:
            continue
        where = f"{origin.get(name, '?')}: feature view {name!r}"
        try:
            _check(view, config)
        except DefinitionError as exc:
            text = str(exc)
            prefix = origin.get(name, "?") if text.startswith("feature view") else where
            raise DefinitionError(f"{prefix}: {text}") from None


def _check(view: FeatureView, config: QuiverConfig) -> None:
    transformation = view.transformation
    assert transformation is not None
    if transformation.function is not None:
        load_function(transformation.function, str(config.repo_path))
        return
    assert transformation.sql is not None
    try:
        duckdb.extract_statements(transformation.sql)
    except duckdb.Error as exc:
        raise DefinitionError(f"its transformation's SQL does not parse: {exc}") from None
    connection = duckdb.connect()
    try:
        for name, source in transformation.inputs.items():
            try:
                schema = raw_dataset(config.offline_root, name, source).schema
            except FailedPreconditionError:
                return  # an input without data yet: binding waits for the backfill
            if schema.get_field_index(source.timestamp_field) < 0 or not pa.types.is_timestamp(
                schema.field(source.timestamp_field).type
            ):
                raise DefinitionError(
                    f"transformation input {name!r} has no timestamp column "
                    f"{source.timestamp_field!r}; it has: {', '.join(schema.names)}"
                )
            connection.register(name, schema.empty_table())
        columns = output_columns(view, transformation)
        try:
            produced = connection.sql(transformation.sql.strip().rstrip(";")).limit(0)
            check_output(view, columns, produced.to_arrow_table().schema)
            query = wrap_sql(transformation.sql, columns, _EPOCH, _EPOCH, dialect="duckdb")
            connection.sql(query).limit(0).fetchall()
        except duckdb.Error as exc:
            raise DefinitionError(f"its transformation's SQL does not fit: {exc}") from None
    finally:
        connection.close()
