"""Who did something, as recorded in governance logs and dataset versions."""

from __future__ import annotations

import getpass

from quiver_server.auth.principal import current_call

ANONYMOUS = "anonymous"


def local_principal() -> str:
    """The person running a command line tool: ``local:<login name>``."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (some containers)
        return "local:unknown"


def call_principal() -> str:
    """The authenticated caller of the current RPC or Flight call (its subject),
    or ``anonymous`` when access control is off."""
    call = current_call()
    return call.principal.subject if call is not None else ANONYMOUS
