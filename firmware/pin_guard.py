"""The device's PIN lockout: how many wrong PINs a user may type before the MFP stops asking.

Per user id per device, across sessions and purges: after `max_failures` wrong PINs in a row the
user is locked for `lock_s` (15 min), and each further lockout doubles it (up to `max_lock_s`). A
right PIN starts the count again, but not the doubling (that resets only after a day without a
lockout). The org's own server keeps its own counter too (org/radius_config.py): this one holds
whatever server the org runs.

Pure: time comes in as `now`. The table holds no user or org id: entries are keyed by an HMAC of
(org, user) under a key made at start and never stored, so the table says nothing about who
tapped. It is bounded: past `max_entries`, the entries least recently touched are dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from dataclasses import dataclass

MAX_FAILURES = 5
LOCK_S = 15 * 60.0
MAX_LOCK_S = 24 * 3600.0
FORGET_S = 24 * 3600.0  # a user this long without a lockout starts again from LOCK_S


@dataclass
class _Entry:
    failures: int = 0
    lockouts: int = 0
    locked_until: float = 0.0
    touched: float = 0.0


class PinGuard:
    def __init__(self, *, max_failures: int = MAX_FAILURES, lock_s: float = LOCK_S,
                 max_lock_s: float = MAX_LOCK_S, max_entries: int = 10_000, key: bytes | None = None):
        self.max_failures, self.lock_s, self.max_lock_s = max_failures, lock_s, max_lock_s
        self.max_entries = max_entries
        self._key = key if key is not None else os.urandom(32)
        self._table: OrderedDict[bytes, _Entry] = OrderedDict()

    def _id(self, org: str, user: str) -> bytes:
        return hmac.new(self._key, f"{org}\0{user}".encode(), hashlib.sha256).digest()

    def _entry(self, org: str, user: str, now: float, create: bool) -> _Entry | None:
        key = self._id(org, user)
        entry = self._table.get(key)
        if entry is not None and entry.locked_until <= now and now - entry.touched >= FORGET_S:
            del self._table[key]
            entry = None
        if entry is None and create:
            entry = self._table[key] = _Entry(touched=now)
            while len(self._table) > self.max_entries:
                self._table.popitem(last=False)
        if entry is not None:
            self._table.move_to_end(key)
        return entry

    def attempts_left(self, org: str, user: str, now: float) -> int:
        """Wrong PINs the user may still type before the lockout (the panel shows it)."""
        entry = self._entry(org, user, now, create=False)
        return self.max_failures - (entry.failures if entry is not None else 0)

    def locked_for(self, org: str, user: str, now: float) -> float:
        """Seconds this user stays locked (0 when not locked)."""
        entry = self._entry(org, user, now, create=False)
        return max(0.0, entry.locked_until - now) if entry is not None else 0.0

    def failed(self, org: str, user: str, now: float) -> float:
        """Count a wrong PIN; the seconds of the lockout it started (0 when none)."""
        entry = self._entry(org, user, now, create=True)
        entry.touched = now
        if entry.locked_until > now:  # an answer that was on its way when the lock began
            return entry.locked_until - now
        entry.failures += 1
        if entry.failures < self.max_failures:
            return 0.0
        lock = min(self.lock_s * (2 ** entry.lockouts), self.max_lock_s)
        entry.lockouts += 1
        entry.failures = 0
        entry.locked_until = now + lock
        return lock

    def succeeded(self, org: str, user: str, now: float) -> None:
        entry = self._entry(org, user, now, create=False)
        if entry is not None:
            entry.failures = 0
            entry.touched = now
