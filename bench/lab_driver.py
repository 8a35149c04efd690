"""The lab as a benchmark of many orgs' sessions drives it (bench/sessions_many.py): cards presented
at the reader, sessions opened by org (a tap whose session fails to open is recorded and tapped
again), jobs printed from an org's desk, a session dropped by its org's gateway (the IKE SA deleted)
and purged, and the firmware at rest (the spare sandbox and keeper back after a purge).
"""

from __future__ import annotations

import socket
import time

from bench import proc_memory
from lab.poll import wait_for

DOC = "/usr/share/cups/data/default-testpage.pdf"
POLL_S = 0.002
FAILED = ("lookup-failed", "profile-refused", "tap-refused", "purge")  # a tap's session did not open (or ended)
TRIES = 3  # a tap whose session failed to open is counted (`failures`) and tried again


class LabDriver:
    """The lab as a benchmark drives it: cards, desks, the firmware's status, gateways' SAs."""

    def __init__(self, lab):
        from lab.vcard import VirtualCard

        self.lab = lab
        self.card = VirtualCard(lab)
        self.pid = lab.procs.get("firmware").pid
        self.numbers: dict[str, int] = {}  # each open session's number (its tap may leave the audit window)
        self.failures: list[dict] = []  # taps whose session did not open (the audit entry that said so)
        self.unrested = 0  # times the spare sandbox or keeper was not back within REST_S after a purge

    def status(self) -> dict:
        from lab.services.firmware import firmware_status

        return firmware_status(self.lab)

    def sessions(self) -> dict:
        return self.status()["sessions"]

    def desk_queue(self, org: str) -> bool:
        from lab.services import org_agents
        from org.desk_agent import trusted_model
        import cups

        last: Exception | None = None
        for _ in range(50):
            try:
                queues = org_agents.desk_queues(self.lab, org)
                return any(q["accepting"] and trusted_model(q["model"]) for q in queues.values())
            except (cups.IPPError, RuntimeError) as exc:  # a desk cupsd polled mid-change now and then fails
                last = exc
                time.sleep(0.002)
        raise RuntimeError(f"the desk's CUPS keeps failing CUPS-Get-Printers: {last!r}")

    def present(self, org: str, user: str, until, random_phase: bool = True, poll_s: float = POLL_S
                ) -> tuple[float, float]:
        """Present `user`'s card (at a random phase of the reader's poll) until `until()` holds;
        returns when it was presented and when `until()` first held."""
        import random

        from lab import actions

        time.sleep(0.45)  # pcscd notices the last removal only at its next poll of vpcd
        if random_phase:
            time.sleep(random.uniform(0, 0.4))
        t0 = time.time()
        self.card.insert(actions.default_uid(org, user), user=user, org=org)
        try:
            wait_for(until, 30, f"{org}'s tap to take effect", poll_s)
            t1 = time.time()
        finally:
            self.card.remove()
        wait_for(lambda: not self.card.status().get("connected"), 5, "the card removed", 0.005)
        return t0, t1

    def ready(self, org: str) -> bool:
        s = self.sessions().get(org)
        return bool(s and s["state"] == "ready")

    def tap_open(self, org: str, user: str, until=None, random_phase: bool = False, poll_s: float = 0.01
                 ) -> tuple[float, float]:
        """Tap `user`'s card until `org`'s session is ready (and `until()` holds, if given); a tap whose
        session fails to open is recorded in `failures` and tapped again (up to TRIES times)."""
        for _ in range(TRIES):
            failed: list[dict] = []
            since = time.time() + 0.45  # present() waits 0.45 s (and the random phase) first

            def done() -> bool:
                st = self.status()
                bad = [a for a in st["audit"] if a.get("event") in FAILED and a.get("org", org) == org
                       and a["t"] >= since and ("session" in a or a["event"] == "tap-refused")]
                if bad:
                    failed.append(bad[-1])
                    return True
                s = st["sessions"].get(org)
                return bool(s and s["state"] == "ready") and (until is None or until())

            t0, t1 = self.present(org, user, done, random_phase, poll_s)
            if not failed:
                return t0, t1
            self.failures.append({"org": org, "at": round(t0, 3), **failed[-1]})
            wait_for(lambda: org not in self.sessions(), 30, f"{org}'s failed session to go", 0.01)
            self.at_rest(0.2)
        raise RuntimeError(f"{org}'s session did not open in {TRIES} taps: {self.failures[-TRIES:]}")

    def open_with_job(self, org: str, user: str) -> None:
        """Open `org`'s session and leave one job of `user` held in it."""
        from lab.services import org_agents

        self.tap_open(org, user)
        self.session_number(org)
        wait_for(lambda: self.desk_queue(org), 30, f"{org}'s desk queue", 0.01)
        org_agents.print_file(self.lab, org, user, DOC)
        wait_for(lambda: self.sessions()[org]["held_jobs"], 30, f"{org}'s held job", 0.01)

    def drop(self, org: str) -> float:
        """The org's gateway deletes the MFP's IKE SA; returns when it was asked to."""
        from lab.orgs import DEVICE_ID
        from org.gateway_config import conn_name
        from vici import Session as ViciSession

        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(self.lab.host(f"gw-{org}").path("/run/charon.vici")))
        t = time.time()
        try:
            for _ in ViciSession(sock).terminate({"ike": conn_name(DEVICE_ID), "timeout": "-1"}):
                pass
        finally:
            sock.close()
        return t

    def close(self, org: str) -> tuple[float, dict]:
        """Drop `org`'s session, wait for its verified purge, and empty its desk's holding queue (the
        desk would deliver the held job to the next session again). Returns when the gateway was
        asked to drop it and the purge's audit entry."""
        from lab.services import org_agents

        number = self.numbers.get(org) or self.session_number(org)
        self.numbers.pop(org, None)
        t_drop = self.drop(org)
        st = wait_for(lambda: org not in (s := self.status())["sessions"] and s, 30, f"{org}'s purge", 0.005)
        purged = [a for a in st["audit"] if a.get("event") == "purged" and a.get("session") == number]
        if purged and not purged[-1].get("ok"):
            raise RuntimeError(f"{org}'s session {number} was not purged cleanly: {purged[-1]}")
        wait_for(lambda: not self.desk_queue(org), 30, f"{org}'s desk queue to go", 0.01)
        org_agents.clear_desk_held(self.lab, org)
        return t_drop, (purged[-1] if purged else {})

    def session_number(self, org: str) -> int:
        taps = [a["session"] for a in self.status()["audit"] if a.get("event") == "tap" and a.get("org") == org
                and "session" in a]
        if not taps:
            raise RuntimeError(f"no tap audit entry for {org}")
        self.numbers[org] = max(taps)
        return self.numbers[org]

    def at_rest(self, pause_s: float = 0.5, rest_s: float = 10.0) -> None:
        """The spare sandbox built and a spare keeper in the device's domain (what follows a purge),
        then `pause_s` more. Not back within `rest_s`: counted (`unrested`), and on (the next tap
        builds what is missing)."""
        def rested() -> bool:
            if self.status()["spare"] is None:
                return False
            t = proc_memory.tree(self.pid)
            return any(p["kind"] == "keeper" and p["netns"] == t["daemon"]["netns"] for p in t["processes"])
        try:
            wait_for(rested, rest_s, "the spare sandbox and keeper", 0.02)
        except Exception:  # noqa: BLE001 (lab.host.LabError: a timeout)
            self.unrested += 1
        time.sleep(pause_s)
