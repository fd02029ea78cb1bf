"""Ticket keys: configured from a file or the environment, rotated, shared by replicas, and
never silently replaced."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from flight_data import (
    make_spine,
    running,
)
from pyarrow import flight

from quiver import TrainingClient
from quiver.errors import DefinitionError
from quiver_flight.server import create_flight_server
from quiver_flight.tickets import TicketSigner, parse_keys
from quiver_server.config import QuiverConfig


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def repo(flight_repo: Callable[..., QuiverConfig]) -> QuiverConfig:
    return flight_repo()


def with_flight(config: QuiverConfig, **settings: Any) -> QuiverConfig:
    return config.model_copy(update={"flight": config.flight.model_copy(update=settings)})


def tickets_from(location: str, spine: pa.Table) -> list[flight.Ticket]:
    with TrainingClient(location) as client:
        info = client.plan(spine, feature_service="model", partition_rows=20)
    return [endpoint.ticket for endpoint in info.endpoints]


def served_by(location: str, tickets: list[flight.Ticket]) -> int:
    raw = flight.connect(location)
    try:
        return sum(raw.do_get(t).read_all().num_rows for t in tickets)
    finally:
        raw.close()


def test_keys_from_a_file_rotate_without_refusing_tickets(repo: QuiverConfig, tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    keys = tmp_path / "ticket-keys"
    keys.write_text(f"# signing key first\n{old}\n")
    spine = make_spine(50)
    with running(with_flight(repo, ticket_key_file=str(keys))) as (_, first):
        old_tickets = tickets_from(first, spine)
        # Rotation, step 1: the new key is added second; step 2: it signs, the old one verifies.
        keys.write_text(f"{new}\n{old}\n")
        with running(with_flight(repo, ticket_key_file=str(keys))) as (_, second):
            assert served_by(second, old_tickets) == 50
            new_tickets = tickets_from(second, spine)
            # The first replica reads the rotated file when a ticket does not verify.
            assert served_by(first, new_tickets) == 50
    # Step 3: the old key is dropped; its tickets are refused, the new ones still served.
    keys.write_text(f"{new}\n")
    with running(with_flight(repo, ticket_key_file=str(keys))) as (_, third):
        assert served_by(third, new_tickets) == 50
        with pytest.raises(flight.FlightError, match="signature"):
            served_by(third, old_tickets)
    assert not (Path(repo.offline_root) / "_spines" / ".ticket-key").exists()


def test_keys_from_the_environment_are_shared_by_replicas(
    repo: QuiverConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIVER_FLIGHT_TICKET_KEYS", f"{new_key()},{new_key()}")
    spine = make_spine(40)
    with running(repo) as (_, first), running(repo) as (_, second):
        tickets = tickets_from(first, spine)
        assert served_by(second, tickets) == 40
    monkeypatch.setenv("QUIVER_FLIGHT_TICKET_KEYS", new_key())
    with running(repo) as (_, other), pytest.raises(flight.FlightError, match="signature"):
        served_by(other, tickets)
    assert not (Path(repo.offline_root) / "_spines" / ".ticket-key").exists()


BROKEN_FILES: dict[str, str | None] = {
    "missing": None,
    "empty": "# no key here\n\n",
    "not base64": "this is not a key!\n",
    "short key": base64.b64encode(b"0123456789").decode() + "\n",
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_a_missing_or_corrupt_key_file_stops_the_server_from_starting(
    repo: QuiverConfig, tmp_path: Path, case: str
) -> None:
    keys = tmp_path / "ticket-keys"
    if BROKEN_FILES[case] is not None:
        keys.write_text(BROKEN_FILES[case] or "")
    with pytest.raises(DefinitionError, match="flight.ticket_key_file"):
        create_flight_server(with_flight(repo, ticket_key_file=str(keys)))


def test_a_corrupt_stored_key_stops_the_server_instead_of_being_replaced(repo: QuiverConfig) -> None:
    spine = make_spine(30)
    with running(repo) as (_, location):
        tickets = tickets_from(location, spine)
    stored = Path(repo.offline_root) / "_spines" / ".ticket-key"
    key = stored.read_bytes()
    stored.write_bytes(key[:5])
    with pytest.raises(DefinitionError, match="corrupt"):
        create_flight_server(repo)
    assert stored.read_bytes() == key[:5]
    stored.write_bytes(key)
    with running(repo) as (_, location):
        assert served_by(location, tickets) == 30
        # A forged ticket is refused and leaves the key as it was.
        with pytest.raises(flight.FlightError, match="signature"):
            served_by(location, [flight.Ticket(tickets[0].ticket[:-3] + b"xyz")])
    assert stored.read_bytes() == key


def test_key_parsing_names_the_problem() -> None:
    one, two = secrets.token_bytes(32), secrets.token_bytes(48)
    text = f"# keys\n{base64.b64encode(one).decode()}\n\n{base64.urlsafe_b64encode(two).decode()}\n"
    assert parse_keys(text, "here") == [one, two]
    with pytest.raises(DefinitionError, match="here: key 2 is not base64"):
        parse_keys(f"{base64.b64encode(one).decode()}\n%%%\n", "here")
    signer = TicketSigner(lambda: [two, one], "test")
    assert signer.verify(b"payload", TicketSigner(lambda: [one], "other").sign(b"payload"))
    assert not TicketSigner(lambda: [one], "x").verify(b"payload", signer.sign(b"other"))
