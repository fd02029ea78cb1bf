"""Who is calling, and what the current call has been allowed or denied.

Transport adapters (the gRPC interceptor, the Flight middleware) authenticate
a call and make a `CallAccess` current for it; the policy checks in
`quiver_server.auth.access` read it from there and record what they decided,
and the adapter writes the audit line when the call ends.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from quiver import Action


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Attributes:
        subject: The principal's name (token subject, static token principal,
            certificate name); permissions list it in ``principals``.
        groups: Groups it belongs to; permissions list them in ``groups``.
        source: How it was authenticated: ``oidc``, ``static`` or ``mtls``.
    """

    subject: str
    groups: frozenset[str] = frozenset()
    source: str = ""


@dataclass(slots=True)
class CallAccess:
    """The access decisions of one call, for enforcement and the audit log."""

    principal: Principal
    method: str
    transport: str
    # What the call was checked for (a push to online and offline: both writes).
    actions: tuple[Action, ...] = ()
    resources: list[str] = field(default_factory=list)
    denied: str | None = None
    # A write or delete: audited whatever its outcome.
    audited: bool = False


_CURRENT: contextvars.ContextVar[CallAccess | None] = contextvars.ContextVar(
    "quiver_call_access", default=None
)


def current_call() -> CallAccess | None:
    """The current call's access state; None outside an authenticated call."""
    return _CURRENT.get()


def enter_call(call: CallAccess) -> contextvars.Token[CallAccess | None]:
    return _CURRENT.set(call)


def exit_call(token: contextvars.Token[CallAccess | None]) -> None:
    _CURRENT.reset(token)
