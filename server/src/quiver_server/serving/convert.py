"""Protobuf conversion for the serving side: typed columns in and out.

Columns travel as `quiver.types.v1.Values`, one packed array per column. This is
the only module of the server that knows how a ValueType maps to a oneof field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from quiver import PushTarget
from quiver.convert import FIELD_FOR_TYPE, from_values, push_target_from_proto
from quiver.errors import FieldViolation, InvalidArgumentError, ResourceExhaustedError
from quiver.serving.v1 import serving_service_pb2 as serving_pb
from quiver.types import ValueType
from quiver.types.v1 import value_pb2
from quiver_server import echo
from quiver_server.online.keys import ACCEPTED_KEY_TYPES


def push_target(value: int) -> PushTarget:
    """The target a PushFeaturesRequest names; INVALID_ARGUMENT for a number it does not know."""
    try:
        return push_target_from_proto(value)
    except ValueError:
        allowed = ", ".join(serving_pb.PushTarget.keys())
        raise InvalidArgumentError.for_field(
            "to", f"{value} is not a push target; allowed: {allowed}", reason="INVALID_PUSH"
        ) from None


@contextmanager
def client_input(field: str, what: str) -> Iterator[None]:
    """Decode what a client sent: Arrow's errors there are the client's, not the server's.

    pyarrow reports malformed input with exceptions that also mean other things
    elsewhere (a short IPC message raises OSError, the class a store outage
    raises), so decoding of in-memory bytes happens inside this guard, which
    names the field; nothing in it touches a disk or a network.
    """
    try:
        yield
    except pa.ArrowMemoryError:
        raise ResourceExhaustedError(
            f"{field}: {what} does not fit in the server's memory", reason="INVALID_PUSH"
        ) from None
    except (pa.ArrowException, OSError) as exc:
        raise InvalidArgumentError.for_field(
            field, f"{what}: {exc}", reason="INVALID_PUSH"
        ) from None


def decode_key_columns(
    entities: Mapping[str, value_pb2.Values],
    key_types: Mapping[str, ValueType],
    *,
    field: str = "entities",
    max_entities: int,
) -> tuple[dict[str, Sequence[Any]], int]:
    """Check and unpack join key columns against the join keys needed.

    Returns the columns by key name and the number of entities. Every problem is
    reported at once as a field violation naming the key.
    """
    violations: list[FieldViolation] = []
    for name in key_types:
        if name not in entities:
            violations.append(FieldViolation(f"{field}.{name}", "missing join key column"))
    unknown = [name for name in entities if name not in key_types]
    allowed = echo.name_list(sorted(key_types))
    for name in unknown[: echo.LIST_NAMES]:
        violations.append(
            FieldViolation(
                f"{field}.{echo.clip(name)}",
                f"not a join key of the requested feature views; expected: {allowed}",
            )
        )
    if len(unknown) > echo.LIST_NAMES:
        violations.append(FieldViolation(
            field, f"{len(unknown) - echo.LIST_NAMES} more columns are not join keys either"
        ))
    columns: dict[str, Sequence[Any]] = {}
    for name, dtype in key_types.items():
        if name not in entities:
            continue
        sent, values = from_values(entities[name])
        accepted = ACCEPTED_KEY_TYPES.get(dtype, ())
        if sent not in accepted:
            violations.append(
                FieldViolation(
                    f"{field}.{name}",
                    f"join key is {dtype.name.lower()}; send "
                    f"{' or '.join(FIELD_FOR_TYPE[t] for t in accepted)}, got "
                    f"{FIELD_FOR_TYPE[sent] if sent else 'no values'}",
                )
            )
            continue
        columns[name] = values
    lengths = {name: len(values) for name, values in columns.items()}
    if not violations and len(set(lengths.values())) > 1:
        described = echo.name_list(f"{n}={c}" for n, c in sorted(lengths.items()))
        violations.append(
            FieldViolation(field, f"join key columns must have the same length, got {described}")
        )
    count = next(iter(lengths.values()), 0)
    if not violations and count == 0:
        violations.append(FieldViolation(field, "request at least one entity"))
    if not violations and count > max_entities:
        violations.append(
            FieldViolation(field, f"{count} entities requested; at most {max_entities} allowed")
        )
    if violations:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgumentError(message, violations=violations, reason="INVALID_ENTITIES")
    return columns, count


def fill_column(values: value_pb2.Values, dtype: ValueType, data: Sequence[Any]) -> None:
    """Write `data` (already zero-filled where absent) into the typed array."""
    getattr(values, FIELD_FOR_TYPE[dtype]).values.extend(data)


def decode_push_rows(request: serving_pb.PushFeaturesRequest) -> pa.Table:
    """Pushed rows as an Arrow table, from the IPC stream or the typed columns."""
    if request.arrow_ipc and request.columns:
        raise InvalidArgumentError.for_field("arrow_ipc", "send either arrow_ipc or columns, not both")
    if request.arrow_ipc:
        with (
            client_input("arrow_ipc", "not a readable Arrow IPC stream"),
            pa.ipc.open_stream(request.arrow_ipc) as reader,
        ):
            table = reader.read_all()
        names = table.column_names
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise InvalidArgumentError.for_field(
                "arrow_ipc", f"columns must have distinct names; repeated: {echo.name_list(twice)}",
                reason="INVALID_PUSH",
            )
        return table
    if not request.columns:
        raise InvalidArgumentError.for_field("columns", "push at least one column")
    arrays = {}
    for name, values in request.columns.items():
        dtype, data = from_values(values)
        if dtype is None:
            raise InvalidArgumentError.for_field(
                f"columns.{echo.clip(name)}", "column has no values"
            )
        with client_input(f"columns.{echo.clip(name)}", f"not {dtype.name.lower()} values"):
            if dtype == ValueType.TIMESTAMP:  # microseconds on the wire
                arrays[name] = pa.array(data, type=pa.int64()).cast(dtype.arrow_type)
            else:
                arrays[name] = pa.array(data, type=dtype.arrow_type)
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        described = echo.name_list(f"{n}={len(a)}" for n, a in sorted(arrays.items()))
        raise InvalidArgumentError.for_field("columns", f"columns must have the same length, got {described}")
    return pa.table(arrays)

