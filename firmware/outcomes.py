"""What became of the jobs a desk delivered, told to the org (its gateway agent, through the tunnel).

A desk keeps a copy of every job it delivered to the MFP until it hears what became of it
(org/desk_agent.py): `released` (its owner released it: it is in the MFP's engine), `printed` (the
engine said it completed: the desk drops its copy), `failed` (the engine aborted it, or never took
it: the desk delivers its copy again, so its owner can retry), `deleted` (its owner deleted it at
the MFP), `expired` (the org's max hold ended it). A job the desk
hears nothing of before the MFP leaves the gateway's listing went back with the session (a tunnel
drop, a restart): the desk delivers it again to the org's next session. Jobs are named by their
delivery id (the first delivery's proof nonce, carried by every redelivery's owner proof,
hal/printer/job_proof.py), never by title or user.

`ReleasedRecord` is the device's memory of released deliveries and how they ended: a redelivery of
a job whose report was lost (the tunnel dropped right after the release) is refused, and reported
again (`released` while the engine still has it, `printed` once it completed), instead of printing
twice; a delivery whose job failed at the engine is forgotten, so its redelivery is held again.

`report()` is one bounded HTTP POST (`print.outcomes_url` of the profile, an address inside the
org's selectors: only ever reached through the tunnel). Blocking; the runtime calls it on the
session worker, so that an `expired` report goes out before the purge takes the tunnel down.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections import OrderedDict
from urllib.parse import urlsplit

STATES = ("released", "printed", "failed", "deleted", "expired")
MAX_BATCH = 100
_DELIVERY = re.compile(r"[0-9a-f]{32}")


class OutcomeError(Exception):
    """The org's gateway agent did not take the report."""


def body(outcomes: list[tuple[str, str]]) -> bytes:
    """Pure: the POST body for (delivery id, state) pairs; ValueError on anything else."""
    if not 1 <= len(outcomes) <= MAX_BATCH:
        raise ValueError(f"1-{MAX_BATCH} outcomes per report")
    for delivery, state in outcomes:
        if not _DELIVERY.fullmatch(delivery) or state not in STATES:
            raise ValueError("an outcome is a 32-hex delivery id and one of " + ", ".join(STATES))
    return json.dumps({"outcomes": [{"delivery": d, "state": s} for d, s in outcomes]}).encode()


def report(url: str, outcomes: list[tuple[str, str]], timeout_s: float = 2.0, tries: int = 2) -> None:
    """POST the outcomes to `url`; OutcomeError when no try got a 2xx within `timeout_s` each."""
    payload = body(outcomes)
    parts = urlsplit(url)
    last = ""
    for attempt in range(tries):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        try:
            conn.request("POST", parts.path, payload, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read(4096)
            if 200 <= resp.status < 300:
                return
            last = f"HTTP {resp.status}"
            if 400 <= resp.status < 500:
                break  # refused: trying again changes nothing
        except (OSError, http.client.HTTPException) as exc:
            last = type(exc).__name__
        finally:
            conn.close()
        if attempt + 1 < tries:
            time.sleep(0.2)
    raise OutcomeError(f"outcomes not taken by the org's gateway agent: {last}")


class ReleasedRecord:
    """Delivery ids released on this device, kept `keep_s` (and at most `limit`, oldest forgotten)."""

    def __init__(self, clock, keep_s: float = 24 * 3600.0, limit: int = 10000):
        self._clock, self._keep_s, self._limit = clock, keep_s, limit
        self._lock = threading.Lock()  # the engine's thread and the sessions' workers both write
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def _prune(self) -> None:
        horizon = self._clock() - self._keep_s
        while self._seen and (len(self._seen) > self._limit or next(iter(self._seen.values()))[0] < horizon):
            self._seen.popitem(last=False)

    def add(self, delivery: str, state: str = "released") -> None:
        """Record `delivery` as released (in the engine), printed, or failed (the engine did not
        print it: its redelivery is held for its owner again, never released by itself)."""
        if state not in ("released", "printed", "failed"):
            raise ValueError("a released delivery is released, printed or failed")
        with self._lock:
            self._seen[delivery] = (self._clock(), state)
            self._seen.move_to_end(delivery)
            self._prune()

    def forget(self, delivery: str) -> None:
        """The job failed at the engine: a redelivery of it is a new job for its owner to release."""
        with self._lock:
            self._seen.pop(delivery, None)

    def state(self, delivery: str) -> str | None:
        """released | printed | failed | None (never released here, or forgotten)."""
        with self._lock:
            self._prune()
            entry = self._seen.get(delivery)
        return entry[1] if entry else None

    def __contains__(self, delivery: object) -> bool:
        with self._lock:
            self._prune()
            return delivery in self._seen

    def __len__(self) -> int:
        return len(self._seen)
