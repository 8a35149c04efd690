"""The operation panel in the lab, through its socket as the web panel and the keypad use it
(firmware/panel_api.py): a person chooses which of their jobs print and deletes the others; the
screen shows only their own jobs, and nothing of the org after the purge. Every scenario ends with
the cleanup invariants. (The real browser on the same flows: tests/lab/test_panel_browser.py.)"""

from __future__ import annotations

from system import clean_system, lab_cli, system, wait_for  # noqa: F401 (fixtures)

DOC = "/usr/share/cups/data/default-testpage.pdf"


def _status():
    return lab_cli("status")


def _held(user: str):
    return sorted(j["id"] for j in _status()["firmware"]["held_jobs"] if j["user"] == user)


def test_alice_chooses_one_job_and_deletes_the_other(clean_system):
    st = lab_cli("tap", "--org", "acme", "--user", "alice")
    assert st["state"] == "ready" and st["panel_url"] == "http://127.0.0.1:8650/" and st["screen"] == "ready"
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(_status()["printed"])
    for user in ("alice", "alice", "carol"):
        lab_cli("print", "--org", "acme", "--user", user, "--from", "desk", DOC)
    wait_for(lambda: len(_held("alice")) == 2 and len(_held("carol")) == 1, 20, "three jobs held")
    first, second = _held("alice")
    carols = _held("carol")

    lab_cli("tap", "--org", "acme", "--user", "alice", "--choose")  # the list, not a print
    screen = lab_cli("panel", "screen")
    assert screen["screen"] == "jobs" and screen["user"] == "alice"
    assert sorted(j["id"] for j in screen["jobs"]) == [first, second]  # carol's job is not shown
    assert _status()["printed"][before:] == []

    # a panel that sends carol's job id with alice's: only alice's own prints
    screen = lab_cli("panel", "print", "--jobs", str(first), str(carols[0]))
    wait_for(lambda: len(_status()["printed"]) - before == 1, 20, "alice's chosen job printed")
    assert [p["user"] for p in _status()["printed"][before:]] == ["alice"]
    assert _held("alice") == [second] and _held("carol") == carols

    lab_cli("panel", "delete", "--jobs", str(second))
    wait_for(lambda: _held("alice") == [], 10, "the deleted job gone at the MFP")
    wait_for(lambda: any(c["user"] == "alice" for c in _status()["desks"]["acme"]["canceled"]), 20,
             "the desk's copy cancelled as deleted")
    assert _held("carol") == carols and len(_status()["printed"]) - before == 1  # never printed

    screen = lab_cli("panel", "logout")
    assert screen["screen"] == "ready" and screen["jobs"] == [] and screen["user"] is None


def test_nobody_logged_in_acts_on_nothing_and_the_purged_screen_names_nothing(clean_system):
    lab_cli("tap", "--org", "acme", "--user", "alice")
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    lab_cli("print", "--org", "acme", "--user", "alice", "--from", "desk", DOC)
    wait_for(lambda: len(_held("alice")) == 1, 20, "alice's job held")
    job = _held("alice")[0]
    before = len(_status()["printed"])
    lab_cli("panel", "print", "--jobs", str(job))        # nobody has tapped to log in
    lab_cli("panel", "delete", "--jobs", str(job))
    assert _held("alice") == [job] and len(_status()["printed"]) == before
    assert lab_cli("panel", "screen")["jobs"] == []

    lab_cli("fault", "gateway-kill", "--org", "acme")
    wait_for(lambda: _status()["firmware"]["state"] == "idle", 60, "the purge")
    screen = lab_cli("panel", "screen")
    assert screen["org"] is None and screen["session"] is None and "acme" not in repr(screen)
    lab_cli("fault", "gateway-start", "--org", "acme")


def test_bob_types_his_pin_on_the_usb_keypad(clean_system):
    lab_cli("tap", "--org", "acme", "--user", "alice")
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    lab_cli("print", "--org", "acme", "--user", "bob", "--from", "desk", DOC)
    wait_for(lambda: len(_held("bob")) == 1, 20, "bob's job held")
    before = len(_status()["printed"])
    st = lab_cli("tap", "--org", "acme", "--user", "bob")
    assert st["state"] == "awaiting_pin" and lab_cli("panel", "screen")["screen"] == "pin"
    st = lab_cli("tap", "--org", "acme", "--user", "bob", "--pin", "1111", "--keypad")  # a wrong one
    assert "Not authorized" in st["panel"] and _held("bob")
    lab_cli("tap", "--org", "acme", "--user", "bob", "--pin", "2468", "--keypad")
    wait_for(lambda: [p["user"] for p in _status()["printed"][before:]] == ["bob"], 20, "bob's document")
