"""Anomalies of verified devices, audited as `anomaly` events.

`new-source`: a device's verified, fresh request (a lookup or card lookup that passed every device
check) from an address the device never used before, when it had used another one: the device's
key at work somewhere else (a copied SD card), or the device moved. The first address a device
uses is its own and not an anomaly. Addresses are kept per device in `device_source`, exactly
(a coworking host next to the MFP on the same LAN is a new source too).

Each API process remembers the pairs it has seen, so the database is asked once per device and
address per process.
"""

from __future__ import annotations

import ipaddress
import threading
import time

from sqlalchemy import Engine, bindparam, select

from cloud.audit_log import audit
from cloud.models import DeviceSource
from cloud.storage import upsert, write_txn

T_SOURCE = DeviceSource.__table__
CACHE_SIZE = 100_000


def exact_source(host: str | None) -> str:
    """A source address as stored: the normalized address (IPv4-mapped IPv6 as IPv4)."""
    try:
        addr = ipaddress.ip_address(host or "")
    except ValueError:
        return (host or "unknown")[:64]
    return str(addr.ipv4_mapped or addr) if addr.version == 6 else str(addr)


class SourceWatch:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def seen(self, device_id: str, host: str | None, org_id: str | None = None) -> bool:
        """Note that `device_id` made a verified, fresh request from `host`; True when that was an
        anomaly (committed to the audit log before this returns)."""
        source = exact_source(host)
        key = (device_id, source)
        with self._lock:
            if key in self._seen:
                return False
        now = time.time()
        with write_txn(self.engine) as conn:
            new = conn.execute(_insert(conn.dialect.name), {"device_id": device_id, "source": source,
                                                             "first_seen": now}).first() is not None
            other = new and conn.execute(OTHER_SOURCE, {"device_id": device_id, "source": source}).first() is not None
            if other:
                audit(conn, "anomaly", "new-source", device_id=device_id, org_id=org_id, at=now, source=source)
        with self._lock:
            if len(self._seen) >= CACHE_SIZE:
                self._seen.clear()
            self._seen.add(key)
        return other


OTHER_SOURCE = (select(T_SOURCE.c.source)
                .where(T_SOURCE.c.device_id == bindparam("device_id"), T_SOURCE.c.source != bindparam("source"))
                .limit(1))


def _insert(dialect: str):
    return (upsert(dialect, T_SOURCE).on_conflict_do_nothing(index_elements=["device_id", "source"])
            .returning(T_SOURCE.c.source))
