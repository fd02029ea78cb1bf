"""A status built from any error fits well inside a client's 8 KiB trailer limit."""

from __future__ import annotations

import base64
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.errors import FieldViolation, InvalidArgumentError, NotFoundError
from quiver.status import decode_status
from quiver_flight.convert import flight_error
from quiver_server import echo
from quiver_server.error_policy import to_status

text = st.text(max_size=5000)


def wire_bytes(message: str, details: bytes) -> int:
    """grpc-message is percent-encoded; grpc-status-details-bin is base64."""
    return len(quote(message)) + len(base64.b64encode(details))


@settings(max_examples=60, deadline=None)
@given(
    message=text,
    violations=st.lists(st.tuples(text, text), max_size=80),
    metadata=st.dictionaries(text, text, max_size=40),
)
def test_any_error_gives_a_bounded_status(
    message: str, violations: list[tuple[str, str]], metadata: dict[str, str]
) -> None:
    error = InvalidArgumentError(
        message, violations=[FieldViolation(f, d) for f, d in violations], metadata=metadata
    )
    status = to_status(error)
    assert status.ByteSize() <= echo.DETAILS_BYTES + 256
    assert wire_bytes(status.message, status.SerializeToString()) < 8192 - 2048
    flight = flight_error(error)
    assert len(str(flight).encode()) < 2 * echo.MESSAGE_BYTES


def test_small_errors_are_untouched() -> None:
    error = InvalidArgumentError.for_field("entities.user_id", "missing join key column")
    status = to_status(error)
    assert status.message == "entities.user_id: missing join key column"
    error2 = NotFoundError("feature view 'x' does not exist", metadata={"feature_view": "x"})
    assert to_status(error2).message == error2.message


def test_clip_and_name_list() -> None:
    assert echo.clip("abc", 5) == "abc"
    assert echo.clip("a" * 100, 10) == "a" * 10 + "...(90 more characters)"
    assert echo.clip_bytes("\u00e9" * 10, 12).endswith("more bytes)")
    assert len(echo.clip_bytes("\u00e9" * 1000, 100).encode()) <= 100
    assert echo.name_list(["a", "b"]) == "a, b"
    assert echo.name_list([str(i) for i in range(20)], limit=3) == "0, 1, 2, ... and 17 more"
    many = echo.bounded_violations([FieldViolation("f", "d")] * 30, limit=5)
    assert len(many) == 6 and many[-1].description == "25 more violation(s) not shown"


def test_shrinking_a_status_never_invents_violations() -> None:
    """An error without violations whose metadata alone is too large loses the metadata,
    and gains no BadRequest detail ("1 more violation(s) not shown" of none)."""
    metadata = {f"key{i}" * 20: "\u00e9" * 200 for i in range(echo.METADATA_ENTRIES)}
    for error in (
        NotFoundError("x" * 900, metadata=metadata),
        InvalidArgumentError("x" * 900, metadata=metadata),
    ):
        status = to_status(error)
        assert status.ByteSize() <= echo.DETAILS_BYTES
        decoded = decode_status(status.SerializeToString())
        assert decoded is not None
        assert decoded.violations == []
        assert [d.type_url.rpartition("/")[2] for d in status.details] == ["google.rpc.ErrorInfo"]


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(0, 30),
    metadata=st.dictionaries(text, text, max_size=40),
)
def test_shown_and_counted_violations_add_up(count: int, metadata: dict[str, str]) -> None:
    """Violations kept plus the ones the last line counts are exactly those given."""
    given_violations = [FieldViolation(f"f{i}" * 40, "\u00e9" * 300) for i in range(count)]
    status = to_status(InvalidArgumentError("m" * 900, violations=given_violations,
                                            metadata=metadata))
    decoded = decode_status(status.SerializeToString())
    assert decoded is not None
    shown = [v for v in decoded.violations if v.field]
    counted = [v for v in decoded.violations if not v.field]
    hidden = int(counted[0].description.split()[0]) if counted else 0
    assert len(counted) <= 1
    assert len(shown) + hidden == count
