"""The append-only audit log (`audit_event`): one row per decision about a verified device, an
operator action, or an anomaly. Refusals that prove nothing are counted elsewhere
(cloud/refusals.py)."""

from __future__ import annotations

import time

from sqlalchemy import insert

from cloud.models import AuditEvent

T_AUDIT = AuditEvent.__table__


def audit(conn, action: str, outcome: str, device_id: str | None = None, org_id: str | None = None,
          at: float | None = None, card_ref: str | None = None, source: str | None = None) -> None:
    """Append one audit event in `conn`'s transaction."""
    conn.execute(insert(T_AUDIT).values(at=time.time() if at is None else at, device_id=device_id,
                                        org_id=org_id, action=action, outcome=outcome, card_ref=card_ref,
                                        source=source))
