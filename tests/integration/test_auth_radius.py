"""hal/auth/radius.py against a real FreeRADIUS on `lan-acme` (10.20.0.50:1812), config from
org/radius_config.py with the lab's users.

The client code runs ON a lab host, as a child `python -c` (the root namespace cannot route into
the lab): mostly on `gw-acme`, whose LAN address 10.20.0.1 is added as an extra RADIUS client of
this module's server; and once on `office` through a real IKEv2 tunnel, from the MFP's virtual IP,
which is the production client range. The profile (with the secret) reaches the child on stdin,
never on its command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pytest

from prereq import need_binary

from lab import sun_cards
from lab.orgs import lab_profile, org_secrets
from lab.services.radius import RadiusService
from lab.users import USERS
from org.radius_config import RadiusUser

ROOT = str(Path(__file__).resolve().parents[2])
GW_LAN = "10.20.0.1"
REJECT_DELAY_S = 1.0

# Runs on a lab host: reads {"auth": <wire auth>, "org": ..., "steps": [...]} on stdin, runs each
# step through hal.auth, prints one JSON result per step. A step {"user", "org"?, "pin"?,
# "use_state": bool, "proof"?} answers the previous step's challenge when use_state is set; "proof":
# true is replaced (in run_steps) by a fresh SUN message of the user's issued card (lab/sun_cards.py).
RUNNER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from hal.directory.profile import SessionProfile
from hal.auth import open_authenticator, PinRequired
req = json.load(sys.stdin)
auth = open_authenticator(SessionProfile.from_wire(req["profile"]).auth)
out, state = [], None
for step in req["steps"]:
    t0 = time.monotonic()
    o = auth.authenticate(step["user"], step.get("org", req["profile"]["org_id"]), step.get("pin"),
                          state if step.get("use_state") else None, proof=step.get("proof"))
    state = o.challenge if isinstance(o, PinRequired) else None
    d = {k: v for k, v in o.__dict__.items() if k != "challenge"}
    d.update(kind=type(o).__name__, elapsed=time.monotonic() - t0, deadline=auth.deadline_s)
    if state is not None:
        d["state_len"] = len(state)
    out.append(d)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def radius(lab):
    need_binary("/usr/sbin/freeradius")
    svc = RadiusService("acme", extra_clients=(f"{GW_LAN}/32",))
    t0 = time.monotonic()
    svc.start(lab)
    svc.startup_s = time.monotonic() - t0
    yield svc
    svc.stop(lab)
    assert not svc.running(lab)


def profile(lab, org="acme", **auth) -> dict:
    wire = lab_profile(lab, org)
    wire["auth"].update(auth)
    return wire


def run_steps(lab, host: str, wire: dict, steps: list[dict]) -> list[dict]:
    steps = [{**st, "proof": sun_cards.next_proofs(lab, wire["org_id"], st["user"])[0]} if st.get("proof") is True else st
             for st in steps]
    proc = lab.host(host).run([sys.executable, "-c", RUNNER, ROOT],
                              input=json.dumps({"profile": wire, "steps": steps}).encode(), check=False,
                              timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return json.loads(proc.stdout)


def assert_no_secret_leak(lab, outputs: list) -> None:
    secret = org_secrets(lab, "acme")["radius"]
    pins = [u.pin for u in USERS if u.pin]
    text = json.dumps(outputs)
    assert secret not in text and not any(p in text for p in pins)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert secret.encode() not in (proc / "cmdline").read_bytes()
            except OSError:
                pass
    for log in lab.layout.logs_dir.glob("*.log"):
        data = log.read_bytes()
        assert secret.encode() not in data, log
        assert not any(f'"{p}"'.encode() in data for p in pins), log
    conf = RadiusService("acme").conf_dir(lab)
    assert all((f.stat().st_mode & 0o077) == 0 for f in conf.iterdir() if f.is_file())
    assert (conf.stat().st_mode & 0o077) == 0


def test_outcomes_of_the_lab_users(lab, radius):
    assert radius.startup_s < 5
    steps = [
        {"user": "alice", "proof": True}, {"user": "carol", "proof": True},
        {"user": "alice"}, {"user": "carol"},
        {"user": "bob"}, {"user": "bob", "pin": "2468", "use_state": True},
        {"user": "bob"}, {"user": "bob", "pin": "1111", "use_state": True},
        {"user": "dave"}, {"user": "mallory"},
        {"user": "alice", "org": "globex"}, {"user": "grace"},
        {"user": "bad user"}, {"user": "bob", "pin": "12ab"},
    ]
    r = run_steps(lab, "gw-acme", profile(lab), steps)
    kinds = [(x["kind"], x.get("message") or x.get("prompt") or x.get("reason")) for x in r]
    assert kinds == [
        ("Accepted", None), ("Accepted", None),
        # without the card's proof: card-only alice is refused, carol is asked her fallback PIN
        ("Rejected", "Card not verified"), ("PinRequired", "Enter PIN"),
        ("PinRequired", "Enter PIN"), ("Accepted", None),
        ("PinRequired", "Enter PIN"), ("Rejected", "Wrong PIN"),
        ("Rejected", "Account disabled"), ("Rejected", "Unknown user"),
        ("Rejected", "User is not a member of this organization"),
        ("Rejected", "Unknown user"),  # grace is globex's: acme's server does not know her
        ("BadInput", "user id is not a valid id"), ("BadInput", "PIN must be 4-16 digits"),
    ]
    assert r[4]["state_len"] == 16 and r[6]["state_len"] == 16
    for x in r:
        if x["kind"] == "Rejected":  # the server's reject delay, and not much more
            assert REJECT_DELAY_S - 0.05 < x["elapsed"] < REJECT_DELAY_S + 0.5, x
        elif x["kind"] in ("Accepted", "PinRequired"):
            assert x["elapsed"] < 0.5, x
    assert_no_secret_leak(lab, r)


def test_the_state_does_not_replace_the_pin(lab, radius):
    # Answering a real challenge with a wrong PIN is a reject; the server checks the PIN, not the State.
    r = run_steps(lab, "gw-acme", profile(lab), [{"user": "bob"}, {"user": "bob", "pin": "0000", "use_state": True},
                                                 {"user": "bob", "pin": "2468"}])
    assert [x["kind"] for x in r] == ["PinRequired", "Rejected", "Accepted"]


class LockoutRadius(RadiusService):
    """acme's server with a second PIN user (the lab's acme has one), on its own port and data dir,
    so the lockout it builds up touches no other test."""

    PORT = 18120
    OTHER = RadiusUser("erin", "pin", "97531")

    def __init__(self):
        super().__init__("acme", port=self.PORT, extra_clients=(f"{GW_LAN}/32",))
        self.name = "radius-acme-lockout"

    def org_radius(self, lab):
        cfg = super().org_radius(lab)
        return dataclasses.replace(cfg, users=(*cfg.users, self.OTHER))


def test_wrong_pins_lock_the_user_at_the_server(lab, radius):
    """The server's own counter: 4 wrong PINs and the right one resets it; 5 wrong PINs lock bob, so
    even the right PIN is answered exactly like a wrong one (message and delay); another PIN user
    and card users are not affected; a restart of the server forgets the lock (memory only)."""
    svc = LockoutRadius()
    svc.start(lab)
    try:
        bob, right, wrong = {"user": "bob"}, "2468", "1111"
        steps = ([{**bob, "pin": wrong}] * 4 + [{**bob, "pin": right}]    # 4 wrong, then the right one
                 + [{**bob, "pin": wrong}, {**bob, "pin": right}]           # accepted: the count was reset
                 + [{**bob, "pin": wrong}] * 5                              # the 5th wrong one locks
                 + [bob, {**bob, "pin": right, "use_state": True}]         # challenge as usual, then no
                 + [{"user": "erin", "pin": svc.OTHER.pin}, {"user": "alice", "proof": True}])
        r = run_steps(lab, "gw-acme", profile(lab, port=svc.PORT), steps)
        kinds = [(x["kind"], x.get("message") or x.get("prompt")) for x in r]
        rejected, accepted = ("Rejected", "Wrong PIN"), ("Accepted", None)
        assert kinds == ([rejected] * 4 + [accepted] + [rejected, accepted] + [rejected] * 5
                         + [("PinRequired", "Enter PIN"), rejected] + [accepted, accepted])
        for x in r:
            if x["kind"] == "Rejected":  # the locked reject takes the reject delay like any other
                assert REJECT_DELAY_S - 0.05 < x["elapsed"] < REJECT_DELAY_S + 0.5, x
        svc.stop(lab)
        svc.start(lab)
        r = run_steps(lab, "gw-acme", profile(lab, port=svc.PORT), [{**bob, "pin": right}])
        assert r[0]["kind"] == "Accepted"
        assert_no_secret_leak(lab, r)
    finally:
        svc.stop(lab)


def test_wrong_secret_is_unavailable_like_a_timeout(lab, radius):
    wire = profile(lab, secret="TPCANARY-acme-radius-wrong-0000", timeout_s=1.5, retries=2)
    r = run_steps(lab, "gw-acme", wire, [{"user": "alice"}])
    assert r[0]["kind"] == "Unavailable"
    assert "wrong" not in r[0]["reason"] and "TPCANARY" not in r[0]["reason"]
    assert r[0]["deadline"] == 3.0
    assert 2.9 < r[0]["elapsed"] < 3.6


def test_timeout_below_reject_delay_is_raised(lab, radius):
    # A profile asking for 0.3 s would turn every reject into "unavailable": the client waits more.
    r = run_steps(lab, "gw-acme", profile(lab, timeout_s=0.3, retries=1), [{"user": "dave"}])
    assert r[0]["kind"] == "Rejected" and r[0]["message"] == "Account disabled"


def test_radius_stopped_is_unavailable_within_bound_then_recovers(lab, radius):
    wire = profile(lab, timeout_s=1.5, retries=2)
    radius.stop(lab)
    try:
        r = run_steps(lab, "gw-acme", wire, [{"user": "alice"}, {"user": "bob", "pin": "2468"}])
        assert [x["kind"] for x in r] == ["Unavailable", "Unavailable"]
        for x in r:
            assert x["elapsed"] < x["deadline"] + 0.5 and x["deadline"] <= 3.0
    finally:
        t0 = time.monotonic()
        radius.start(lab)
        restart_s = time.monotonic() - t0
    assert restart_s < 5
    r = run_steps(lab, "gw-acme", wire, [{"user": "alice", "proof": True}])
    assert r[0]["kind"] == "Accepted"


def test_lab_default_profile_bound(lab, radius):
    # The lab profile (timeout 3 s, 2 sends) gives up after 6 s: far below pyrad's 15 s default.
    radius.stop(lab)
    try:
        r = run_steps(lab, "gw-acme", profile(lab), [{"user": "alice"}])
    finally:
        radius.start(lab)
    assert r[0]["kind"] == "Unavailable" and r[0]["deadline"] == 6.0
    assert r[0]["elapsed"] < 6.5


def test_through_the_tunnel_from_the_mfp_virtual_ip(lab, radius):
    """The production path: the MFP on `office` asks acme's server from its virtual IP, through
    IKEv2 to gw-acme; the server knows the MFP only as the gateway's virtual-IP pool."""
    need_binary("/usr/lib/ipsec/charon", "/usr/sbin/swanctl")
    from hal.directory.profile import SessionProfile
    from hal.tunnel import TunnelConfig, open_tunnel
    from lab.services.charon import GatewayService, MfpCharonService

    # The lab's own server: its only clients are the virtual-IP pool (no test client on gw-acme).
    radius.stop(lab)
    pool_only = RadiusService("acme")
    pool_only.start(lab)
    mfp = MfpCharonService()
    gw = GatewayService("acme", backend=mfp.backend())
    mfp.start(lab)
    gw.start(lab)
    tun = open_tunnel(TunnelConfig(backend=mfp.backend(), vici_socket=str(mfp.vici_socket(lab)),
                                   netns=lab.host("office").ns))
    try:
        up = tun.up(SessionProfile.from_wire(profile(lab)), timeout=10)
        r = run_steps(lab, "office", profile(lab), [
            {"user": "alice", "proof": True}, {"user": "bob"}, {"user": "bob", "pin": "2468", "use_state": True},
            {"user": "dave"}])
        assert [x["kind"] for x in r] == ["Accepted", "PinRequired", "Accepted", "Rejected"]
        assert up.virtual_ip.startswith("10.20.0.2")
        assert_no_secret_leak(lab, r)
        # A host of the LAN outside the pool is not a client: its requests are dropped.
        r = run_steps(lab, "gw-acme", profile(lab, timeout_s=1.5, retries=1), [{"user": "alice"}])
        assert r[0]["kind"] == "Unavailable"
    finally:
        tun.down()
        tun.purge()
        gw.stop(lab)
        mfp.stop(lab)
        pool_only.stop(lab)
        radius.start(lab)
    # Without the tunnel, office cannot reach the server at all: the same call is Unavailable.
    r = run_steps(lab, "office", profile(lab, timeout_s=1.5, retries=1), [{"user": "alice"}])
    assert r[0]["kind"] == "Unavailable"
