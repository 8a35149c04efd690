"""Rate limits of the directory: token buckets in each API process's memory.

Two kinds, both answered `429 {"error": "rate-limited"}` with `Retry-After` (seconds):

- per source address, before anything else is done with the request (no body parsed, no database
  touched): lookups and card lookups share one bucket per address, enrolment has its own;
- per device and source address, after the request's signature verified (a device cannot be
  throttled by requests naming it, nor by a copy of its key signing from another address): lookups
  and card lookups share one bucket per device and address.

Buckets live in the memory of one API process: with N processes behind a load balancer a client
gets up to N times the configured rate. That is accepted: the limits are there to make a stolen
key or a flood slow and visible, not to meter; a shared counter would cost a database write per
request. An IPv6 source is limited per /64 (one host can use the whole /64).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from typing import Callable

from sqlalchemy import Engine

from cloud.anomalies import exact_source
from cloud.audit_log import audit
from cloud.config import LimitsSection
from cloud.storage import write_txn

MAX_KEYS = 100_000  # per bucket set; the least recently used bucket goes first (a full one is no loss)


class TokenBuckets:
    """One token bucket per key: `burst` tokens, refilled at `per_min` per minute. `per_min` 0:
    unlimited (every `take` passes)."""

    def __init__(self, per_min: float, burst: int, *, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.max_keys, self.clock = per_min / 60.0, float(burst), max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0.0 when `key` may go on (one token spent), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            if wait == 0.0:
                tokens -= 1
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait

    def give_back(self, key: str) -> None:
        """Return the token a request took (it turned out not to be the key's own: a replay)."""
        with self._lock:
            if key in self._buckets:
                tokens, at = self._buckets[key]
                self._buckets[key] = (min(self.burst, tokens + 1), at)


def retry_after(wait_s: float) -> str:
    """The `Retry-After` value for a wait: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))


def source_key(host: str | None) -> str:
    """The key of a source address: the address itself, an IPv6 address's /64."""
    try:
        addr = ipaddress.ip_address(host or "")
    except ValueError:
        return (host or "unknown")[:64]
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class RateLimits:
    """The directory's three bucket sets, from the `[limits]` config section."""

    def __init__(self, limits: LimitsSection, *, clock: Callable[[], float] = time.monotonic):
        self.source = TokenBuckets(limits.source_per_min, limits.source_burst, clock=clock)
        self.enrol = TokenBuckets(limits.enrol_per_min, limits.enrol_burst, clock=clock)
        self.device = TokenBuckets(limits.device_per_min, limits.device_burst, clock=clock)

    def for_path(self, path: str) -> tuple[str, TokenBuckets] | None:
        """(action, bucket set) limiting requests to `path` by source, or None (health, docs)."""
        if path == "/v1/enrol":
            return "enrol", self.enrol
        if path == "/v1/cards/lookup":
            return "card-lookup", self.source
        if path.startswith("/v1/orgs/"):
            return "lookup", self.source
        return None


class RateLimited(Exception):
    """A verified device over its rate limit; `retry_after_s` until its next token."""

    def __init__(self, retry_after_s: float):
        super().__init__("rate-limited")
        self.retry_after_s = retry_after_s


class DeviceThrottle:
    """The per-device limit, applied after a request's signature verified. The first refusal per
    device, address and minute is an audit event (naming the device and the address: a device over
    its limit is a key at work somewhere, or a fault); the others are counted (`count_refusal`)."""

    def __init__(self, engine: Engine, buckets: TokenBuckets | None, count_refusal: Callable[[str, str, str | None], None]):
        self.engine, self.buckets, self.count_refusal = engine, buckets, count_refusal
        self._audited: dict[str, int] = {}  # device and address -> the minute of its last audited refusal

    def take(self, device_id: str, action: str, host: str | None) -> None:
        """Spend one of the device's tokens at `host`, or raise `RateLimited` (in a worker thread).
        One bucket per device and source address: a copy of the device's key at work elsewhere (a
        copied SD card) empties its own bucket, not the device's (whose lookups still pass)."""
        wait = self.buckets.take(_key(device_id, host)) if self.buckets is not None else 0.0
        if wait <= 0:
            return
        now = time.time()
        minute = int(now // 60)
        key = _key(device_id, host)
        if self._audited.get(key) != minute:
            if len(self._audited) >= MAX_KEYS:
                self._audited.clear()
            self._audited[key] = minute
            with write_txn(self.engine) as conn:
                audit(conn, action, "rate-limited", device_id=device_id, at=now, source=exact_source(host))
        else:
            self.count_refusal(action, "device-rate-limited", host)
        raise RateLimited(wait)

    def give_back(self, device_id: str, host: str | None) -> None:
        """A request that took a token was a replay of the device's earlier one: a copy must not
        spend the device's own allowance."""
        if self.buckets is not None:
            self.buckets.give_back(_key(device_id, host))


def _key(device_id: str, host: str | None) -> str:
    return f"{device_id}\0{exact_source(host)}"
