"""Who did something, as recorded in governance logs and dataset versions."""

from __future__ import annotations

import getpass

ANONYMOUS = "anonymous"


def local_principal() -> str:
    """The person running a command line tool: ``local:<login name>``."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (some containers)
        return "local:unknown"


def call_principal() -> str:
    """The authenticated caller of the current RPC, or ``anonymous``."""
    return ANONYMOUS
