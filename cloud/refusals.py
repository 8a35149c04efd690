"""Refusals that prove nothing are counted, not audited one row each.

A request whose signature did not verify (missing or malformed headers, an unknown device, a bad
signature), an enrolment with an unknown token, and a request a rate limit turned away say nothing
reliable about who sent it: its device and org ids are whatever the sender wrote. So they are not
audit events (which name devices and are append-only) but counters in `refusal_count`, one row per
(minute, action, reason, source prefix), holding a count. The claimed device and org ids are not
stored at all.

The bound: each API process counts at most `MAX_PREFIXES` (16) distinct source prefixes (IPv4 /24,
IPv6 /48) per minute, the rest as `other`; actions and reasons come from closed sets, and only 38
(action, reason) pairs occur (lookup, card lookup and certificate: missing-headers,
malformed-headers, malformed-signature, unknown-device, bad-signature, rate-limited,
device-rate-limited; session end: the same but device-rate-limited; enrol: unknown-token,
bad-public-key, rate-limited; the public CA and CRL (`other`): rate-limited; gateway reports:
missing-headers, malformed-headers, malformed-signature, bad-certificate, bad-signature,
stale-request, rate-limited). So a minute adds at most 38 x (16 x processes + 1) rows (646 with one
process), however many requests arrive; 400 junk lookups from one address add one row per reason
they hit per minute they span. Rows older than `RETENTION_S` (30 days) are deleted.

Counts are gathered in memory and written at most once a second per process (one upsert per key),
so a flood costs no database write per request; a process that dies loses at most its last second
of counts.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Callable

from sqlalchemy import Engine, delete, select

from cloud.models import RefusalCount
from cloud.storage import read_txn, upsert, write_txn

log = logging.getLogger("tenantprint.cloud")
T_REFUSAL = RefusalCount.__table__

ACTIONS = ("lookup", "card-lookup", "enrol", "certificate", "gateway-report", "session-end")
REASONS = ("missing-headers", "malformed-headers", "malformed-signature", "unknown-device", "bad-signature",
           "unknown-token", "bad-public-key", "rate-limited", "device-rate-limited", "bad-certificate",
           "stale-request")
MAX_PREFIXES = 16
BUCKET_S = 60
RETENTION_S = 30 * 86400
FLUSH_S = 1.0
MAX_PENDING = 10_000  # keys held while the database cannot be written; beyond, counts are dropped


def source_prefix(host: str | None) -> str:
    """The network a source address is counted under: its /24 (IPv4) or /48 (IPv6)."""
    try:
        addr = ipaddress.ip_address(host or "")
    except ValueError:
        return "unknown"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 48}", strict=False))


class RefusalCounter:
    """Per-process aggregation of refusals into `refusal_count`."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time, flush_s: float = FLUSH_S):
        self.engine, self.clock, self.flush_s = engine, clock, flush_s
        self._pending: dict[tuple[int, str, str, str], int] = {}
        self._bucket, self._prefixes = -1, set()
        self._flushed_at = 0.0
        self._pruned_bucket = -1
        self._lock = threading.Lock()

    def note(self, action: str, reason: str, host: str | None) -> bool:
        """Count one refusal; True when a flush is due (the caller runs `flush`, off the event loop)."""
        now = self.clock()
        bucket = int(now // BUCKET_S) * BUCKET_S
        action = action if action in ACTIONS else "other"
        reason = reason if reason in REASONS else "other"
        prefix = source_prefix(host)
        with self._lock:
            if bucket != self._bucket:
                self._bucket, self._prefixes = bucket, set()
            if prefix not in self._prefixes:
                if len(self._prefixes) >= MAX_PREFIXES:
                    prefix = "other"
                else:
                    self._prefixes.add(prefix)
            key = (bucket, action, reason, prefix)
            if key in self._pending or len(self._pending) < MAX_PENDING:
                self._pending[key] = self._pending.get(key, 0) + 1
            return now - self._flushed_at >= self.flush_s

    def pending(self) -> bool:
        """Whether counts wait to be written."""
        with self._lock:
            return bool(self._pending)

    def flush(self) -> int:
        """Write the pending counts (one upsert per key); returns how many keys were written."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed_at = self.clock()
            prune = self._bucket != self._pruned_bucket
            self._pruned_bucket = self._bucket
        if not pending:
            return 0
        try:
            with write_txn(self.engine) as conn:
                stmt = _upsert(conn.dialect.name)
                for (bucket, action, reason, prefix), n in sorted(pending.items()):  # one lock order
                    conn.execute(stmt, {"bucket": bucket, "action": action, "reason": reason,
                                        "source_prefix": prefix, "count": n})
                if prune:
                    conn.execute(delete(T_REFUSAL).where(T_REFUSAL.c.bucket < self.clock() - RETENTION_S))
        except Exception as exc:  # counting must not turn a refusal into an error; keep the counts
            log.error("refusal counts not written: %s", type(exc).__name__)
            with self._lock:
                for key, n in pending.items():
                    if key in self._pending or len(self._pending) < MAX_PENDING:
                        self._pending[key] = self._pending.get(key, 0) + n
            return 0
        return len(pending)


def _upsert(dialect: str):
    stmt = upsert(dialect, T_REFUSAL)
    return stmt.on_conflict_do_update(index_elements=["bucket", "action", "reason", "source_prefix"],
                                      set_={"count": T_REFUSAL.c.count + stmt.excluded.count})


def counted(engine: Engine, since: float | None = None, until: float | None = None) -> list[dict]:
    """The counter rows, oldest bucket first."""
    q = select(T_REFUSAL).order_by(T_REFUSAL.c.bucket, T_REFUSAL.c.action, T_REFUSAL.c.reason,
                                   T_REFUSAL.c.source_prefix)
    if since is not None:
        q = q.where(T_REFUSAL.c.bucket >= since - BUCKET_S)
    if until is not None:
        q = q.where(T_REFUSAL.c.bucket <= until)
    with read_txn(engine) as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def summarize(rows: list[dict]) -> list[dict]:
    """One summary per minute bucket: total, counts by action/reason and by source prefix."""
    out: dict[int, dict] = {}
    for r in rows:
        s = out.setdefault(r["bucket"], {"bucket": r["bucket"], "total": 0, "reasons": {}, "sources": {}})
        s["total"] += r["count"]
        what = f"{r['action']}/{r['reason']}"
        s["reasons"][what] = s["reasons"].get(what, 0) + r["count"]
        s["sources"][r["source_prefix"]] = s["sources"].get(r["source_prefix"], 0) + r["count"]
    return [out[b] for b in sorted(out)]
