"""OnlineClient.push cuts a large push into Arrow IPC messages that each fit the limit."""

from __future__ import annotations

import pyarrow as pa
import pytest

from quiver._online_client import push_messages
from quiver.errors import InvalidArgumentError


def rows_of(data: bytes) -> pa.Table:
    with pa.ipc.open_stream(data) as reader:
        return reader.read_all()


def test_small_push_is_one_message() -> None:
    table = pa.table({"a": [1, 2, 3]})
    [(count, data)] = list(push_messages(table, 1 << 20))
    assert count == 3 and rows_of(data).equals(table)


@pytest.mark.parametrize("limit", [4_000, 10_000, 30_000])
def test_messages_fit_and_keep_every_row_in_order(limit: int) -> None:
    # Row sizes vary a lot, so cutting by the average row size alone would overshoot.
    sizes = [10] * 500 + [1_500] * 20 + [10] * 500
    table = pa.table({"id": list(range(len(sizes))), "s": ["x" * n for n in sizes]})
    messages = list(push_messages(table, limit))
    assert len(messages) > 1
    assert all(len(data) <= limit for _, data in messages)
    assert sum(count for count, _ in messages) == table.num_rows
    assert pa.concat_tables(rows_of(data) for _, data in messages).equals(table)


def test_a_row_larger_than_a_message_is_refused() -> None:
    table = pa.table({"s": ["small", "x" * 10_000]})
    with pytest.raises(InvalidArgumentError, match="row 1 alone takes"):
        list(push_messages(table, 5_000))
