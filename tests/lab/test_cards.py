"""The cards people already carry (issue 19), in the lab behind the PC/SC reader: a badge on an NTAG
(Type 2) releases like one on a Type 4 card; bob's staff card, known only by its UID, is found in
the cloud's card directory, asks for his PIN and releases his job (his org's server says the card is
his); an unregistered UID reads "Card not registered"; a copied UID without the PIN releases nothing.
Every scenario ends with the cleanup invariants."""

from __future__ import annotations

import time

from system import clean_system, lab_cli, system, wait_for  # noqa: F401 (fixtures)

DOC = "/usr/share/cups/data/default-testpage.pdf"


def _status():
    return lab_cli("status")


def _held_users():
    return sorted(j["user"] for j in _status()["firmware"]["held_jobs"])


def _printed_users(since: int):
    return [p["user"] for p in _status()["printed"][since:]]


def _print(user: str):
    lab_cli("print", "--org", "acme", "--user", user, "--from", "desk", DOC)
    wait_for(lambda: user in _held_users(), 20, f"{user}'s job held")


def test_a_badge_on_an_ntag_opens_the_session_and_releases_with_the_fallback_pin(clean_system):
    """An NTAG cannot prove itself (issue 18): card-only alice's badge on one opens the session but
    releases nothing; carol's asks for her fallback PIN, then releases her job only."""
    st = lab_cli("tap", "--org", "acme", "--user", "alice", "--card", "type2")
    assert st["state"] == "ready" and st["org"] == "acme"
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(_status()["printed"])
    _print("alice")
    _print("carol")
    st = lab_cli("tap", "--org", "acme", "--user", "alice", "--card", "type2")
    assert (st["state"], st["panel"]) == ("ready", "Not authorized")
    lab_cli("tap", "--org", "acme", "--user", "carol", "--card", "type2", "--pin", "739146")
    wait_for(lambda: _printed_users(before) == ["carol"], 15, "carol's document")
    assert _held_users() == ["alice"]


def test_a_staff_card_known_by_its_uid_asks_the_pin_and_releases_its_owners_jobs(clean_system):
    st = lab_cli("tap", "--org", "acme", "--user", "bob", "--card", "uid-only")  # the cloud says: acme
    assert st["state"] == "ready" and st["org"] == "acme"
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(_status()["printed"])
    _print("bob")
    _print("alice")
    st = lab_cli("tap", "--org", "acme", "--user", "bob", "--card", "uid-only")  # no PIN typed
    assert st["state"] == "awaiting_pin"
    assert "04c0ffee5a1e01" not in str(st)  # the UID is never shown or logged in full
    from lab.services.firmware import firmware_request
    firmware_request(clean_system, {"cmd": "pin-cancel"})
    wait_for(lambda: _status()["firmware"]["state"] == "ready", 10, "PIN entry cancelled")
    assert _held_users() == ["alice", "bob"]  # a copied UID without the PIN releases nothing
    lab_cli("tap", "--org", "acme", "--user", "bob", "--card", "uid-only", "--pin", "2468")
    wait_for(lambda: _printed_users(before) == ["bob"], 15, "bob's document")
    time.sleep(1)
    assert _held_users() == ["alice"] and _printed_users(before) == ["bob"]  # his jobs, not alice's
    st = _status()["firmware"]
    assert st["authenticated_user"] == "bob"


def test_an_unregistered_uid_is_not_registered_and_opens_nothing(clean_system):
    st = lab_cli("tap", "--org", "acme", "--user", "bob", "--card", "uid-only", "--uid", "04deadbeef0001")
    assert st["state"] == "idle" and st["org"] is None
    assert st["panel"] == "Card not registered"


def test_a_felica_lite_s_badge_on_the_nfc_reader_opens_and_releases(clean_system):
    st = lab_cli("tap", "--org", "acme", "--user", "alice", "--card", "type3")  # through nfcpy
    assert st["state"] == "ready" and st["org"] == "acme"
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(_status()["printed"])
    _print("carol")
    # a FeliCa Lite-S cannot prove itself: carol's fallback PIN (issue 18)
    lab_cli("tap", "--org", "acme", "--user", "carol", "--card", "type3", "--pin", "739146")
    wait_for(lambda: _printed_users(before) == ["carol"], 15, "carol's document")
    readers = _status()["firmware"]["card_reader"]
    assert readers["connected"] is True and len(readers["readers"]) == 3


def test_a_wedge_readers_badge_number_asks_the_pin_and_releases_its_owners_job(clean_system):
    lab_cli("tap", "--org", "acme", "--user", "alice")
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(_status()["printed"])
    _print("bob")
    st = lab_cli("tap", "--org", "acme", "--user", "bob", "--card", "wedge", "--pin", "2468")
    assert st["authenticated_user"] == "bob"
    wait_for(lambda: _printed_users(before) == ["bob"], 15, "bob's document")
    assert "20260042" not in str(_status())  # the badge number is never shown or logged in full


def test_a_staff_card_of_an_ldap_org_is_mapped_by_its_directory(clean_system):
    # globex checks its users in its slapd (the lab's `--ldap globex`): the card is listed in heidi's
    # entry (carLicense); the directory says whose it is, her PIN is the bind
    st = lab_cli("tap", "--org", "globex", "--user", "heidi", "--card", "uid-only")
    assert st["state"] == "ready" and st["org"] == "globex"
    wait_for(lambda: _status()["desks"]["globex"]["queue"], 20, "globex's desk queue")
    before = len(_status()["printed"])
    lab_cli("print", "--org", "globex", "--user", "heidi", "--from", "desk", DOC)
    wait_for(lambda: "heidi" in _held_users(), 20, "heidi's job held")
    st = lab_cli("tap", "--org", "globex", "--user", "heidi", "--card", "uid-only", "--pin", "9999")
    assert st["panel"] == "Not authorized" and _held_users() == ["heidi"]  # a copied UID, a wrong PIN
    lab_cli("tap", "--org", "globex", "--user", "heidi", "--card", "uid-only", "--pin", "1357")
    wait_for(lambda: _printed_users(before) == ["heidi"], 15, "heidi's document")


def test_an_nfc_reader_absent_at_start_works_within_5_s_of_being_plugged_in(clean_system):
    lab_cli("fault", "nfc-reader-unplug")
    try:
        lab_cli("fault", "firmware-kill")
        lab_cli("fault", "firmware-start")  # the daemon starts without it
        st = wait_for(lambda: (s := _status()["firmware"])["state"] == "idle" and s, 30, "the daemon up again")
        nfc = [r for r in st["card_reader"]["readers"] if not r["connected"]]
        assert len(nfc) == 1 and nfc[0]["problem"], st["card_reader"]  # said, with the cause
    finally:
        lab_cli("fault", "nfc-reader-plug")
    t0 = time.monotonic()
    wait_for(lambda: _status()["firmware"]["card_reader"]["connected"], 5, "the nfcpy reader back")
    assert time.monotonic() - t0 <= 5.5
    st = lab_cli("tap", "--org", "acme", "--user", "alice", "--card", "type3")  # no restart needed
    assert st["state"] == "ready" and st["org"] == "acme"


def test_cards_nobody_registered_are_not_registered_on_every_reader(clean_system):
    for kind in ("uid-only", "wedge"):  # alice has neither registered: her UID, her badge number
        st = lab_cli("tap", "--org", "acme", "--user", "alice", "--card", kind)
        assert (st["state"], st["org"], st["panel"]) == ("idle", None, "Card not registered"), kind
