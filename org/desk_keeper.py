"""The desk agent's keeper of the holding queue ("No job is lost", issue 14; org/desk_holding.py).

- Keeps the queue `tenantprint-held` as it must be: raw, its device URI one that never sends
  (`HELD_DEVICE_URI`), stopped, accepting (the backend puts its copies there), not shared. Checked
  at start and every `check_s`; set right when it is not.
- Follows the org's outcomes (`GET /v1/outcomes` long poll on the gateway agent, its own thread) and
  remembers them (`keep_s`, `limit`: a copy may appear a moment after its outcome, when the MFP
  prints a job as it arrives).
- Applies `plan()` when outcomes arrive, when the MFP listing or the ready queues change (the desk
  agent calls `update`), and every `scan_s`: drops, cancels with a reason, or moves a copy to an MFP
  queue and releases it there.
- Before the desk agent deletes an MFP's queue (its MFP went), moves that queue's unfinished jobs
  into the holding queue and holds them (`evacuate`): deleting a queue would drop them, and the
  next session gets them like any copy. A job still being sent is stopped by cupsd for the move.

Every CUPS operation goes over the desk cupsd's local socket as root (org/desk_cups.py). One lock
serializes them: the agent's thread and the keeper's threads both act.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict

import cups as pycups

from org.desk_cups import DeskCups, DeskCupsError, DeskCupsNotFound
from org.desk_listing import read_bounded
from org.desk_holding import (HELD_DEVICE_URI, HELD_QUEUE, MAX_AGE_S, OUTCOME_STATES, REDELIVERED, HeldCopy,
                               Plan, plan)

log = logging.getLogger("tenantprint.org.desk_keeper")

MAX_OUTCOMES_ANSWER = 4 << 20  # a page of 1000 outcomes is ~150 KiB
_PRINTER_STOPPED = 5


class OutcomeMemory:
    """Outcomes by delivery id, the latest kept; `keep_s` seconds and `limit` entries at most.
    A `failed` report acted on is marked `redelivered` (`consume`): the same report read again
    (same gateway time `at`) does not undo that; a later failure does."""

    def __init__(self, keep_s: float = 24 * 3600.0, limit: int = 20000):
        self._seen: OrderedDict[str, tuple[str, float, object]] = OrderedDict()
        self.keep_s, self.limit = keep_s, limit

    def add(self, outcomes: list, now: float) -> int:
        added = 0
        for o in outcomes:
            if not (isinstance(o, dict) and isinstance(o.get("delivery"), str) and len(o["delivery"]) == 32
                    and o.get("state") in OUTCOME_STATES):
                continue
            old = self._seen.get(o["delivery"], ("", 0, None))
            if old[0] == REDELIVERED and o["state"] == "failed" and old[2] == o.get("at"):
                continue  # the failure this desk already delivered again
            if old[0] != o["state"]:
                added += 1
            self._seen.pop(o["delivery"], None)
            self._seen[o["delivery"]] = (o["state"], now, o.get("at"))
        while self._seen and (len(self._seen) > self.limit or next(iter(self._seen.values()))[1] < now - self.keep_s):
            self._seen.popitem(last=False)
        return added

    def states(self) -> dict[str, str]:
        return {d: s for d, (s, _, _) in self._seen.items()}

    def consume(self, delivery: str) -> None:
        """A `failed` report was acted on (its copy delivered again)."""
        entry = self._seen.get(delivery)
        if entry is not None and entry[0] == "failed":
            self._seen[delivery] = (REDELIVERED, entry[1], entry[2])


class HoldingKeeper:
    def __init__(self, cups: DeskCups, gateway_url: str, scan_s: float = 2.0, check_s: float = 30.0,
                 wait_s: float = 20.0, max_age_s: float = MAX_AGE_S, verifier=None):
        self.cups = cups
        self.verifier = verifier  # certificate mode: only outcomes the org's gateway signed
        self.gateway_url = gateway_url.rstrip("/")
        self.scan_s, self.check_s, self.wait_s, self.max_age_s = scan_s, check_s, wait_s, max_age_s
        self.outcomes = OutcomeMemory()
        self.version: int | None = None
        self.listing: dict[str, str] = {}  # MFP id -> session, as listed now
        self.ready: dict[str, str] = {}  # MFP id -> its trusted desk queue
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._checked = 0.0

    # -- the holding queue itself ----------------------------------------------------------------

    def ensure_queue(self) -> None:
        """Add the holding queue, or set it right: raw, never sending, stopped, accepting, not shared."""
        try:
            a = self.cups.printer(HELD_QUEUE, ["device-uri", "printer-state", "printer-is-accepting-jobs",
                                               "printer-is-shared"])
        except DeskCupsNotFound:
            a = None
        ok = a is not None and (a.get("device-uri") or [""])[0] == HELD_DEVICE_URI and \
            (a.get("printer-state") or [0])[0] == _PRINTER_STOPPED and \
            (a.get("printer-is-accepting-jobs") or [False])[0] is True and \
            (a.get("printer-is-shared") or [True])[0] is False
        if ok:
            return
        pycups.setServer(self.cups.path)
        conn = pycups.Connection()
        if a is None or (a.get("device-uri") or [""])[0] != HELD_DEVICE_URI:
            # no PPD: a raw queue (CUPS says raw queues are deprecated; they work in 2.4)
            conn.addPrinter(HELD_QUEUE, device=HELD_DEVICE_URI,
                            info="Jobs this desk keeps for the shared office printer (tenantprint)")
        conn.disablePrinter(HELD_QUEUE, reason="holds delivered jobs: never prints")
        conn.acceptJobs(HELD_QUEUE)
        conn.setPrinterShared(HELD_QUEUE, False)
        log.info("holding queue %s set up (stopped, accepting, not shared, device %s)", HELD_QUEUE, HELD_DEVICE_URI)

    # -- what the desk agent tells it ------------------------------------------------------------

    def update(self, listing: dict[str, str], ready: dict[str, str]) -> None:
        """The MFPs listed now (id -> session) and the ready queues (id -> queue); applies the plan
        when either changed."""
        with self._lock:
            if listing == self.listing and ready == self.ready:
                return
            self.listing, self.ready = dict(listing), dict(ready)
            self.apply()

    def evacuate(self, queue: str) -> list[int]:
        """Move `queue`'s unfinished jobs into the holding queue, held (before the queue is deleted)."""
        moved = []
        with self._lock:
            try:
                jobs = self.cups.queue_jobs(queue)
            except DeskCupsError as exc:
                log.warning("jobs of %s not read, not kept: %s", queue, exc)
                return moved
            for job in jobs:
                try:
                    self.cups.move(job, HELD_QUEUE)
                    self.cups.hold(job)
                    moved.append(job)
                except DeskCupsError as exc:
                    log.warning("job %d of %s not kept: %s", job, queue, exc)
        if moved:
            log.info("jobs %s of %s kept in %s for the next session", moved, queue, HELD_QUEUE)
        return moved

    # -- applying the plan -----------------------------------------------------------------------

    def apply(self) -> Plan | None:
        with self._lock:
            try:
                if time.monotonic() - self._checked > self.check_s:
                    self.ensure_queue()
                    self._checked = time.monotonic()
                copies = self.cups.held_copies()
            except DeskCupsNotFound:
                self._checked = 0.0  # the queue went: set it up again at once
                return None
            except (DeskCupsError, RuntimeError, pycups.IPPError) as exc:  # pycups: RuntimeError when cupsd is away
                log.warning("holding queue not read or not set up: %s", exc)
                return None
            todo = plan(copies, self.listing, self.ready, self.outcomes.states(), time.time(), self.max_age_s)
            self._carry_out(todo, {c.job_id: c for c in copies})
            return todo

    def _carry_out(self, todo: Plan, copies: dict[int, HeldCopy]) -> None:
        for job in todo.drop:
            self._do(f"copy {job} dropped (released or deleted at the MFP)", self.cups.purge, job)
        for job, reason in todo.cancel:
            self._do(f"copy {job} cancelled: {reason}", self.cups.cancel, copies[job], reason)
        for job in todo.hold:
            self._do(f"copy {job} held", self.cups.hold, job)
        for job, queue in todo.redeliver:
            c = copies[job]
            what = f"delivery {c.note.delivery[:8]}" if c.note else "never delivered"
            if self._do(f"copy {job} ({what}) moved to {queue} for delivery", self.cups.move, job, queue):
                if self._do(f"copy {job} released in {queue}", self.cups.release, job) and c.note:
                    self.outcomes.consume(c.note.delivery)  # one failure, one redelivery

    @staticmethod
    def _do(what: str, fn, *args) -> bool:
        try:
            fn(*args)
        except DeskCupsError as exc:
            log.warning("%s: failed: %s", what, exc)
            return False
        log.info("%s", what)
        return True

    # -- threads -----------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            with self._lock:
                self.ensure_queue()
                self._checked = time.monotonic()
        except (DeskCupsError, RuntimeError, pycups.IPPError) as exc:
            log.warning("holding queue not set up yet: %s", exc)
        threading.Thread(target=self._follow_outcomes, name="outcomes", daemon=True).start()
        threading.Thread(target=self._scan, name="holding-scan", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _scan(self) -> None:
        while not self._stop.wait(self.scan_s):
            try:
                self.apply()
            except Exception:  # noqa: BLE001 (the keeper's look must go on whatever one look met)
                log.exception("holding queue: look failed")

    def poll_outcomes(self) -> int:
        """One long poll of the gateway agent's outcomes; how many were new."""
        url = f"{self.gateway_url}/v1/outcomes"
        if self.version is not None:
            url += f"?after={self.version}&wait={self.wait_s:g}"
        body = json.loads(read_bounded(url, self.wait_s + 5, MAX_OUTCOMES_ANSWER, verifier=self.verifier))
        version, outcomes = int(body["version"]), body["outcomes"]
        if not isinstance(outcomes, list):
            raise ValueError("outcomes: not a list")
        with self._lock:
            added = self.outcomes.add(outcomes, time.time())
            self.version = version
        return added

    def _follow_outcomes(self) -> None:
        while not self._stop.is_set():
            try:
                if self.poll_outcomes():
                    self.apply()
            except Exception as exc:  # noqa: BLE001 (the gateway away, a bad answer: try again)
                log.debug("outcomes not read: %s: %s", type(exc).__name__, exc)
                self._stop.wait(1.0)
