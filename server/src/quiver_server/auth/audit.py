"""The audit log: one structured line per write, delete and denied call.

Lines go to the ``quiver.audit`` logger (JSON in production, like every other
log line), with the principal, the action, the resources it touched, the
outcome and the status the call ended with::

    {"event": "audit", "principal": "txn-stats-pipeline", "principal_source": "static",
     "method": "PushFeatures", "transport": "grpc", "action": "WRITE_ONLINE",
     "resources": ["feature_view:user_transaction_stats"], "outcome": "allowed",
     "status": "OK", ...}

Writes are pushes and spine uploads; deletes are DeleteEntities; denied calls
are those refused as UNAUTHENTICATED or PERMISSION_DENIED.
"""

from __future__ import annotations

from typing import Any

import structlog

from quiver_server.auth.principal import CallAccess

audit_log = structlog.get_logger("quiver.audit")


def call_completed(call: CallAccess, status: str) -> None:
    """Write the call's audit line if it was a write, a delete or denied."""
    if call.denied is None and not call.audited:
        return
    fields: dict[str, Any] = {
        "principal": call.principal.subject,
        "principal_source": call.principal.source,
        "method": call.method,
        "transport": call.transport,
        "action": "+".join(a.name for a in call.actions) or None,
        "resources": call.resources,
        "outcome": "denied" if call.denied is not None else "allowed",
        "status": status,
    }
    if call.denied is not None:
        fields["reason"] = call.denied
    (audit_log.warning if call.denied is not None else audit_log.info)("audit", **fields)


def unauthenticated(method: str, transport: str, reason: str, peer: str | None) -> None:
    """The audit line of a call refused before anyone was identified."""
    audit_log.warning(
        "audit", principal=None, method=method, transport=transport, action=None,
        resources=[], outcome="unauthenticated", status="UNAUTHENTICATED", reason=reason,
        peer=peer,
    )
