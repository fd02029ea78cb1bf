"""The write rule as an Aerospike filter expression, and a fast way to make one per row.

Every record a batch write sends carries its own filter, built with the public
`aerospike_helpers.expressions` API (`compile_write_filter`): the stored record
is replaced only if it is absent or older, so the rule holds on the server
however many writers race. Compiling that expression costs about 75 us per row
in CPython, as much as the rest of a write.

`WriteFilter` is the one place that relies on more than the public API: the
compiled form (a list of ``(op, result_type, fixed, children)`` tuples, which
the helpers document as the type `TypeExpression` handed to the client) is
compiled once with two marker values, and each row's filter is that list with
the row's timestamps put where the markers were (about 6 us per row). It is
used only for aerospike client versions it was checked against
(`VERIFIED_CLIENT_MAJOR`) and only if, at construction, its output equals the
public compile for sample rows; otherwise every row is compiled through the
public API, with one warning. It never fails a store's start.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

import structlog
from aerospike_helpers import expressions as exp

log = structlog.get_logger(__name__)

EVENT_BIN = "_e"
CREATED_BIN = "_c"
# Major versions of the `aerospike` client whose compiled expressions the fast path knows.
VERIFIED_CLIENT_MAJOR = frozenset({19})

Expression = list[Any]


def compile_write_filter(event_ts: int, created_ts: int) -> Expression:
    """The write rule for one row as a compiled filter expression (public API only).

    True when the stored record is absent or older:
    ``_e`` absent OR ``_e < event_ts`` OR (``_e == event_ts`` AND ``_c <= created_ts``).
    A write whose filter is false is not applied (result FILTERED_OUT).
    """
    compiled: Expression = exp.Or(
        exp.Not(exp.BinExists(EVENT_BIN)),
        exp.LT(exp.IntBin(EVENT_BIN), event_ts),
        exp.And(
            exp.Eq(exp.IntBin(EVENT_BIN), event_ts),
            exp.LE(exp.IntBin(CREATED_BIN), created_ts),
        ),
    ).compile()
    return compiled


def client_version() -> str | None:
    try:
        return metadata.version("aerospike")
    except metadata.PackageNotFoundError:
        return None


class WriteFilter:
    """`compile_write_filter` for many rows: the fast path when it is safe, else the public one.

    Args:
        version: The aerospike client version (default: the installed one).
    """

    # Values no real timestamp pair uses together, to find the constants' places.
    _EVENT_MARK = -0x5155_4956_4552_0001
    _CREATED_MARK = -0x5155_4956_4552_0002
    # Rows the fast path must reproduce exactly before it is trusted.
    _SAMPLES = ((0, 0), (1_714_521_600_000_000, 5), (-1, 2**62), (2**63 - 1, -(2**63)))

    def __init__(self, version: str | None = None) -> None:
        version = client_version() if version is None else version
        self.fast = False
        self._make: Callable[[int, int], Expression] = compile_write_filter
        why = self._unverified(version)
        if why is None:
            try:
                template = self._Template(compile_write_filter(self._EVENT_MARK, self._CREATED_MARK),
                                          self._EVENT_MARK, self._CREATED_MARK)
                if all(template(e, c) == compile_write_filter(e, c) for e, c in self._SAMPLES):
                    self._make, self.fast = template, True
                else:
                    why = "its filters differ from the public compile"
            except (IndexError, KeyError, TypeError, ValueError) as exc:
                why = f"the compiled form is not the known one ({exc})"
        if why is not None:
            log.warning("aerospike write filters use the slower public compile",
                        client_version=version, reason=why)

    @staticmethod
    def _unverified(version: str | None) -> str | None:
        major = version.split(".", 1)[0] if version else ""
        if not major.isdigit() or int(major) not in VERIFIED_CLIENT_MAJOR:
            return f"client version {version} is not one the fast path was checked against"
        return None

    def __call__(self, event_ts: int, created_ts: int) -> Expression:
        return self._make(event_ts, created_ts)

    class _Template:
        """A compiled filter with the places of its two constants known."""

        def __init__(self, template: Expression, event_mark: int, created_mark: int) -> None:
            self._template = template
            self._event_at = self._positions(template, event_mark)
            self._created_at = self._positions(template, created_mark)
            if not self._event_at or not self._created_at:
                raise ValueError("marker constants not found")
            op, result_type, _, children = template[self._event_at[0]]
            self._value = (op, result_type, children)

        @staticmethod
        def _positions(template: Expression, mark: int) -> tuple[int, ...]:
            return tuple(
                i for i, entry in enumerate(template)
                if isinstance(entry[2], dict) and entry[2].get("val") == mark
            )

        def __call__(self, event_ts: int, created_ts: int) -> Expression:
            op, result_type, children = self._value
            expression = self._template.copy()
            event = (op, result_type, {"val": event_ts}, children)
            for i in self._event_at:
                expression[i] = event
            created = (op, result_type, {"val": created_ts}, children)
            for i in self._created_at:
                expression[i] = created
            return expression
