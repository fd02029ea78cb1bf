"""Running user functions (on-demand views, custom transforms) as part of a call.

A function that raises, or returns the wrong type or number of values, is the
caller's problem to see: INVALID_ARGUMENT naming the view or transform, never
INTERNAL. The traceback stays in the server log; the message the caller gets
carries the exception's type and text with file paths removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import structlog

from quiver import ValueType
from quiver.errors import InvalidArgumentError

log = structlog.get_logger(__name__)

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+){2,}")
_MAX_MESSAGE = 300
_FAMILIES = (
    {ValueType.INT64, ValueType.INT32}, {ValueType.FLOAT64, ValueType.FLOAT32},
    {ValueType.BOOL}, {ValueType.STRING}, {ValueType.BYTES}, {ValueType.TIMESTAMP},
)


@dataclass(frozen=True)
class UserCode:
    """Who a function belongs to, for error messages and metadata.

    Attributes:
        what: E.g. "on-demand feature view 'txn_features'".
        field: The request field to blame, e.g. "on_demand_feature_views.txn_features".
        metadata: ErrorInfo metadata naming the view or transform.
    """

    what: str
    field: str
    metadata: Mapping[str, str]

    def error(self, description: str) -> InvalidArgumentError:
        return InvalidArgumentError.for_field(
            self.field, f"{self.what} {description}", reason="TRANSFORMATION_FAILED",
            metadata=dict(self.metadata),
        )

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)`, with any exception turned into INVALID_ARGUMENT."""
        try:
            return function(*args)
        except Exception as exc:
            log.warning("user function failed", function=self.what, exc_info=exc)
            text = _PATH.sub("<path>", str(exc))[:_MAX_MESSAGE]
            raise self.error(f"raised {type(exc).__name__}: {text}") from None

    def array(self, value: Any, name: str, expected: ValueType, rows: int) -> pa.Array:
        """`value` as an array of `expected`'s Arrow type with `rows` values.

        Integer and float widths convert (float64 to float32 rounds); any other
        type is refused.
        """
        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        if isinstance(value, pa.Array) and value.type == expected.arrow_type and len(value) == rows:
            return value
        if not isinstance(value, pa.Array):
            raise self.error(
                f"returned {type(value).__name__} for {name!r}; return a pyarrow.Array"
            )
        if pa.types.is_dictionary(value.type):
            value = value.dictionary_decode()
        actual = ValueType.from_arrow(value.type)
        if actual is None or not any(actual in f and expected in f for f in _FAMILIES):
            raise self.error(
                f"returned {value.type} for {name!r}, declared {expected.name.lower()}"
            )
        if len(value) != rows:
            raise self.error(f"returned {len(value)} values for {name!r}, expected {rows}")
        if value.type == expected.arrow_type:
            return value
        try:
            return value.cast(expected.arrow_type, safe=expected != ValueType.FLOAT32)
        except pa.ArrowInvalid as exc:
            raise self.error(
                f"returned values for {name!r} that do not fit {expected.name.lower()}: {exc}"
            ) from None
