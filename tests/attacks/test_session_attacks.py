"""Attacks on the session itself (issue 13, items 4, 5 and 6): a hostile org gateway that picks the
MFP's address, a colleague guessing PINs, a card of an organization that does not exist, and a
passer-by reading the shared panel. Each ran against the lab at the code before issue 13 and won:
the gateway's coworker address was taken, six wrong PINs and then the right one released, a
made-up org's card ended the serving session, and the panel told disabled from unknown users.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))

from system import clean_system, lab_cli, system, wait_for  # noqa: E402,F401 (fixtures)

DOC = "/usr/share/cups/data/default-testpage.pdf"
COWORK = "10.77.0.20"  # another tenant's laptop on the office LAN


def _status():
    return lab_cli("status")


def _held_users():
    return sorted(j["user"] for j in _status()["firmware"]["held_jobs"])


def _printed_users(since: int):
    return [p["user"] for p in _status()["printed"][since:]]


def _open_acme():
    st = lab_cli("tap", "--org", "acme", "--user", "alice")
    assert st["state"] == "ready", st
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")


def _restart_firmware(system):
    """What an operator does; also the only way the lab resets the device's PIN lockout."""
    fw = system.service("firmware")
    fw.stop(system)
    fw.start(system)
    from lab.services.firmware import firmware_status
    wait_for(lambda: firmware_status(system)["state"] == "idle", 30, "the firmware at rest")


def _office_addresses(system) -> list[str]:
    out = system.host("office").run(["ip", "-j", "addr"]).stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]


def test_a_gateway_that_offers_a_coworkers_address_gets_no_session(clean_system):
    """Hostile org gateway: hands the MFP the coworker's office LAN address as its virtual IP, so
    that the MFP would answer for it on the office LAN -> refused, audited, nothing kept."""
    system = clean_system
    gw = system.host("gw-acme")
    conf = system.service("gateway-acme").conf_dir(system) / "swanctl.conf"
    hostile = conf.with_name("hostile-pools.conf")
    hostile.write_text(re.sub(r"addrs = \S+", f"addrs = {COWORK}", conf.read_text()))
    hostile.chmod(0o600)
    load = ["swanctl", "--load-pools", "--uri", "unix:///run/charon.vici", "--file"]
    try:
        gw.run([*load, str(hostile)])
        st = lab_cli("tap", "--org", "acme", "--user", "alice")
        assert st["state"] == "idle" and st["org"] is None, st
        assert "address" in st["panel"], st["panel"]
        refused = [a for a in st["audit"] if a["event"] == "virtual-ip-refused"]
        assert refused and refused[-1]["virtual_ip"] == COWORK
        assert COWORK not in _office_addresses(system)
        assert not _status()["desks"]["acme"]["queue"]
    finally:
        hostile.unlink(missing_ok=True)
        gw.run([*load, str(conf)])
    _open_acme()  # the honest pool again: a session as usual


def test_pin_guessing_locks_after_five_wrong_pins(clean_system):
    """Colleague guessing bob's PIN at the panel: five wrong PINs, then even the right one is
    refused for 15 minutes; the panel never says whether the user exists, and no PIN typed is
    left in any office process after the purge."""
    system = clean_system
    try:
        _open_acme()
        before = len(_status()["printed"])
        lab_cli("print", "--org", "acme", "--user", "bob", DOC)
        wait_for(lambda: _held_users() == ["bob"], 20, "bob's job held")
        for guess in ("1111", "2222", "3333", "4444", "5555"):
            st = lab_cli("tap", "--org", "acme", "--user", "bob", "--pin", guess)
            assert st["state"] == "ready" and st["panel"] == "Not authorized", st
        st = lab_cli("tap", "--org", "acme", "--user", "bob", "--pin", "2468")
        assert st["state"] == "ready" and "too many wrong PINs" in st["panel"], st
        assert not st["pin_requested"]
        assert _held_users() == ["bob"] and _printed_users(before) == []
        # another user of the same org is not locked by bob's lockout
        lab_cli("print", "--org", "acme", "--user", "carol", DOC)
        wait_for(lambda: _held_users() == ["bob", "carol"], 20, "carol's job held")
        lab_cli("tap", "--org", "acme", "--user", "carol")
        wait_for(lambda: _printed_users(before) == ["carol"], 10, "carol's document")
        # the device's lock ends with the daemon; the org's own server still holds bob's (defence in depth)
        _restart_firmware(system)
        _open_acme()
        st = lab_cli("tap", "--org", "acme", "--user", "bob", "--pin", "2468")
        assert st["panel"] == "Not authorized" and st["authenticated_user"] is None, st
    finally:
        _restart_firmware(system)  # purges the session; the lockout lives in the daemon's memory
        lab_cli("fault", "radius-stop", "--org", "acme")  # the server's lock lives in its memory
        lab_cli("fault", "radius-start", "--org", "acme")
    scan = lab_cli("scan-secrets")
    assert scan["clean"], scan["findings"]


def test_the_right_pin_leaves_no_pin_in_any_office_process(clean_system):
    """After a PIN session and its purge, `scan-secrets` finds neither bob's PIN nor any canary."""
    _open_acme()
    before = len(_status()["printed"])
    lab_cli("print", "--org", "acme", "--user", "bob", DOC)
    wait_for(lambda: _held_users() == ["bob"], 20, "bob's job held")
    lab_cli("tap", "--org", "acme", "--user", "bob", "--pin", "2468")
    wait_for(lambda: _printed_users(before) == ["bob"], 10, "bob's document")
    lab_cli("fault", "gateway-kill", "--org", "acme")  # the tunnel drops: purge
    wait_for(lambda: _status()["firmware"]["state"] == "idle", 20, "the purge")
    scan = lab_cli("scan-secrets")
    assert scan["clean"], scan["findings"]


def test_a_card_of_an_unknown_org_costs_the_serving_session_nothing(clean_system):
    """Anyone with a written card naming a made-up org (or one without a contract) taps while
    alice walks to her desk: the serving session, its desk queue and its tunnel stay."""
    _open_acme()
    vip = _status()["firmware"]["tunnel"]["virtual_ip"]
    for org, user in (("nosuchorg", "mallory"), ("initech", "ivy")):
        st = lab_cli("tap", "--org", org, "--user", user)
        assert st["org"] == "acme" and st["state"] == "ready", st
        assert st["tunnel"]["up"] and st["tunnel"]["virtual_ip"] == vip
    assert _status()["desks"]["acme"]["queue"]
    before = len(_status()["printed"])
    lab_cli("print", "--org", "acme", "--user", "alice", DOC)
    wait_for(lambda: _held_users() == ["alice"], 20, "alice's job held")
    lab_cli("tap", "--org", "acme", "--user", "alice")
    wait_for(lambda: _printed_users(before) == ["alice"], 10, "alice's document")


def test_another_orgs_real_tap_opens_a_session_beside_the_serving_one(clean_system):
    """A real org's tap costs the serving session nothing either: globex's session opens in a
    sandbox of its own, acme's stays (both desks show the MFP)."""
    _open_acme()
    st = lab_cli("tap", "--org", "globex", "--user", "grace")
    assert st["org"] == "globex" and st["state"] == "ready", st
    wait_for(lambda: _status()["desks"]["globex"]["queue"] and _status()["desks"]["acme"]["queue"], 20,
             "both desks with the MFP")
    assert set(_status()["firmware"]["sessions"]) == {"acme", "globex"}
