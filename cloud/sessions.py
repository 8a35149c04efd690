"""Each device's open sessions, one per org (issue 18: the cloud limits what a stolen key can do
unnoticed).

A granted profile lookup opens the device's session with that org (`device_session`); the device
reports its end (`POST /v1/device/sessions/end`, signed: one org, or every org at the daemon's start,
which covers a crash or a power cut). A granted lookup for an org the device already holds a session
with is a second session with one device identity: the device never looks an org up again while
its session with it is open, so that is a copy of its keys at work beside it, and it is audited
as `anomaly`/`second-session` with the source address of the lookup that made it. The lookup is
still answered (it holds no secret in certificate mode, and refusing it would let a thief's lookup
lock the real device out); the audit is what the operator sees.

A session row older than `OPEN_MAX_S` is not counted as open (a device that lost its end report
and its restart report both): the longest session the firmware keeps is far shorter.

An end report's nonce is spent like a lookup's, in the same transaction as the delete: a replayed
report cannot close a session again after the device opened a new one.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import Engine, bindparam, delete, select

from cloud.audit_log import audit
from cloud.models import Device, DeviceSession
from cloud.storage import upsert, write_txn

T_SESSION = DeviceSession.__table__
T_DEVICE = Device.__table__
OPEN_MAX_S = 12 * 3600.0
_OPEN = (select(T_SESSION.c.opened_at)
         .where(T_SESSION.c.device_id == bindparam("device_id"), T_SESSION.c.org_id == bindparam("org_id")))


def open_session(conn, device_id: str, org_id: str, source: str, now: float) -> bool:
    """In a granted lookup's transaction (SQLite; cloud/lookup_pg.py does the same in its
    statement): the device's session with `org_id` opens; True when it held one open already
    (then audited `anomaly`/`second-session` with `source`)."""
    before = conn.execute(_OPEN, {"device_id": device_id, "org_id": org_id}).scalar()
    second = before is not None and now - before < OPEN_MAX_S
    if second:
        audit(conn, "anomaly", "second-session", device_id=device_id, org_id=org_id, at=now, source=source)
    stmt = upsert(conn.dialect.name, T_SESSION).values(device_id=device_id, org_id=org_id, opened_at=now,
                                                       source=source)
    conn.execute(stmt.on_conflict_do_update(index_elements=["device_id", "org_id"],
                                            set_={"opened_at": now, "source": source}))
    return second


class DeviceSessions:
    def __init__(self, engine: Engine):
        self.engine = engine

    def ended(self, device_id: str, nonce: str, public_key: bytes, org_id: str | None,
              now: float | None = None) -> int:
        """The device's report that its session with `org_id` (None: every org) ended; how many
        sessions were open. Its nonce is spent here; a refused device is `Unauthenticated`."""
        from cloud.lookup import Unauthenticated, _device_refused  # (cloud.lookup opens sessions: no cycle at import)

        now = time.time() if now is None else now
        with write_txn(self.engine) as conn:
            dev = conn.execute(select(T_DEVICE.c.public_key, T_DEVICE.c.status)
                               .where(T_DEVICE.c.id == device_id)).first()
            why = _device_refused(conn, dev, device_id, nonce, public_key, now)
            if why is not None:
                raise Unauthenticated(why, device_id)
            cond = [T_SESSION.c.device_id == device_id]
            if org_id is not None:
                cond.append(T_SESSION.c.org_id == org_id)
            return conn.execute(delete(T_SESSION).where(*cond)).rowcount or 0


def parse_end(body: bytes) -> str | None:
    """The org of an end report's body `{"org_id": "<org>"}` (`{"org_id": null}`: every org), else
    Refused("malformed")."""
    from cloud.lookup import Refused, _safe_id

    try:
        doc = json.loads(body)
        org = doc["org_id"]
        if set(doc) != {"org_id"} or not (org is None or (isinstance(org, str) and _safe_id(org) == org)):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise Refused("malformed") from None
    return org
