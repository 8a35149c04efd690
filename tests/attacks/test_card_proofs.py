"""A written card releases nothing (issue 18): card-only alice's job is released only by the card
her org issued her, whose every read carries a fresh SUN message the org's own RADIUS server checks
(org/radius_sun.py), never the MFP.

The attacker is a colleague at the shared printer with an NFC phone that writes any NDEF to any
card and reads (skims) cards nearby. Each attack taps through the real reader path (vpcd, pcscd)
with the lab CLI; alice's job must stay held after each, and her real card must still release it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))

from system import clean_system, lab_cli, system, wait_for  # noqa: E402,F401 (fixtures)

from hal.card.badge import MIME_TYPE, decode_badge, encode_badge, mime_record  # noqa: E402

DOC = "/usr/share/cups/data/default-testpage.pdf"


def _status():
    return lab_cli("status")


def _held_users():
    return sorted(j["user"] for j in _status()["firmware"]["held_jobs"])


def _printed_users(since: int):
    return [p["user"] for p in _status()["printed"][since:]]


def _refused(st: dict) -> None:
    assert (st["state"], st["panel"]) == ("ready", "Not authorized"), st
    assert _held_users() == ["alice"]


def _last_message() -> bytes:
    last = lab_cli("card", "last")
    assert last["ndef_hex"], last
    return bytes.fromhex(last["ndef_hex"])


def test_written_replayed_and_relabelled_card_messages_release_nothing(clean_system):
    """A badge for alice written on any card (no proof), on a card with her UID but a made-up SUN
    message, a replay of the message her real card gave at an earlier tap, and the fresh message
    of carol's real card relabelled as alice's are all refused: her job stays held, and nothing of
    it prints. Her real card then releases it."""
    st = lab_cli("tap", "--org", "acme", "--user", "carol")  # opens acme's session
    assert st["state"] == "ready" and st["org"] == "acme"
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(_status()["printed"])
    lab_cli("print", "--org", "acme", "--user", "alice", "--from", "desk", DOC)
    wait_for(lambda: _held_users() == ["alice"], 20, "alice's job held")

    # 1. a version 1 badge for alice written on a blank card with any UID: no proof at all
    _refused(lab_cli("tap", "--org", "acme", "--user", "alice", "--uid", "04aa55aa55aa01"))
    # 2. a version 2 badge with a made-up SUN message (the attacker has no key of acme's)
    forged = encode_badge("alice", "acme", sun=("00112233445566778899AABBCCDDEEFF", "0011223344556677"))
    _refused(lab_cli("tap", "--org", "acme", "--user", "alice", "--ndef-hex", forged.hex()))
    # 3. her real card's message of an earlier tap, replayed from a clone with her UID: carol taps
    #    (a fresh message of hers, released nothing of alice's), then alice's message is skimmed at
    #    a tap that the server accepted and replayed
    lab_cli("tap", "--org", "acme", "--user", "alice")  # her real tap: nothing of hers is lost,
    wait_for(lambda: _held_users() == [], 20, "alice's first job released")  # it prints
    used = _last_message()
    assert decode_badge(used).proof  # the tap carried her card's proof
    lab_cli("print", "--org", "acme", "--user", "alice", "--from", "desk", DOC)
    wait_for(lambda: _held_users() == ["alice"], 20, "alice's second job held")
    printed = len(_status()["printed"])
    _refused(lab_cli("tap", "--org", "acme", "--user", "alice", "--ndef-hex", used.hex()))
    # 4. carol's real card, fresh message, relabelled: the badge says alice, the proof is carol's
    lab_cli("tap", "--org", "acme", "--user", "carol")
    carol = decode_badge(_last_message())
    relabelled = mime_record(MIME_TYPE, json.dumps(
        {"v": 2, "u": "alice", "o": "acme", "e": carol.proof[:32], "c": carol.proof[32:]},
        separators=(",", ":")).encode())
    _refused(lab_cli("tap", "--org", "acme", "--user", "alice", "--ndef-hex", relabelled.hex()))
    assert len(_status()["printed"]) == printed  # nothing printed by any of them

    # her real card, a fresh message: released
    lab_cli("tap", "--org", "acme", "--user", "alice")
    wait_for(lambda: _printed_users(before).count("alice") == 2, 20, "alice's second document")
    assert _held_users() == []
