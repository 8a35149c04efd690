"""Cards that prove themselves (issue 18), on the MFP's side: a version 2 badge carries the card's SUN
message (`Badge.proof`, 48 uppercase hex digits), the tap carries it, and the pure session machine
forwards it unchanged to the org's server in exactly one request: the tap's own authentication (or,
in combined mode, the opener's first one), never a PIN answer. Pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace

import pytest

from firmware import machine as m
from firmware.effects import Authenticate
from firmware.events import (AuthPinRequired, AuthRejected, CardTapped, Pin, PinEntered, Policy,
                             PrintServiceUp, ProfileFetched, PurgeDone, TunnelDown, TunnelUp)
from hal.card import BadgeBadFields, CardTap
from hal.card.badge import MIME_TYPE, Badge, decode_badge, encode_badge, mime_record
from hal.card.tap import card_event
from org import card_sun
from org.card_sun import Card

CARD = Card.new(bytes.fromhex("04A1B2C3D4E5F6"))
MSG = card_sun.message(CARD.uid, 1, CARD.k_meta_read, CARD.k_file_read)
PROOF = MSG.enc_picc_data + MSG.mac  # what the card mirrors: e then c, uppercase hex
OTHER = card_sun.message(CARD.uid, 2, CARD.k_meta_read, CARD.k_file_read)
OTHER_PROOF = OTHER.enc_picc_data + OTHER.mac


# -- the badge ----------------------------------------------------------------------------------

def test_version_2_round_trip_carries_the_proof():
    badge = decode_badge(encode_badge("alice", "acme", sun=(MSG.enc_picc_data, MSG.mac)))
    assert badge == Badge("alice", "acme", PROOF)
    assert len(badge.proof) == 48 and badge.proof == badge.proof.upper()
    assert PROOF not in repr(badge)  # good for one tap, but not logged


def test_version_2_payload_is_the_documented_format():
    msg = encode_badge("alice", "acme", sun=(MSG.enc_picc_data, MSG.mac))
    payload = json.loads(msg[3 + len(MIME_TYPE):])
    assert payload == {"v": 2, "u": "alice", "o": "acme", "e": MSG.enc_picc_data, "c": MSG.mac}


def test_lower_case_hex_is_normalised_to_upper_case():
    e, c = MSG.enc_picc_data.lower(), MSG.mac.lower()
    assert decode_badge(encode_badge("alice", "acme", sun=(e, c))).proof == PROOF
    # a badge written by another tool, in lower case, reads the same
    written = mime_record(MIME_TYPE, json.dumps({"v": 2, "u": "alice", "o": "acme", "e": e, "c": c}).encode())
    assert decode_badge(written).proof == PROOF


@pytest.mark.parametrize("sun", [("0" * 31, "0" * 16), ("0" * 32, "0" * 15), ("G" * 32, "0" * 16),
                                 ("0" * 32, "0" * 17)])
def test_encode_refuses_a_message_of_the_wrong_shape(sun):
    with pytest.raises(BadgeBadFields):
        encode_badge("alice", "acme", sun=sun)


def test_version_1_still_decodes_without_a_proof():
    assert decode_badge(encode_badge("alice", "acme")) == Badge("alice", "acme")
    assert decode_badge(encode_badge("alice", "acme")).proof == ""
    assert decode_badge(mime_record(MIME_TYPE, b'{"v":1,"u":"alice","o":"acme"}')).proof == ""


def test_the_tap_carries_the_badges_proof():
    uid = CARD.uid
    tap = card_event(uid, "type4", "r0", lambda: decode_badge(encode_badge("alice", "acme", sun=(MSG.enc_picc_data, MSG.mac))))
    assert isinstance(tap, CardTap) and tap.proof == PROOF
    assert PROOF not in repr(tap)
    v1 = card_event(uid, "type4", "r0", lambda: decode_badge(encode_badge("alice", "acme")))
    assert isinstance(v1, CardTap) and v1.proof == ""


# -- the machine forwards it once ----------------------------------------------------------------

LAN = (ipaddress.ip_network("10.20.0.0/24"),)
OWN = ("10.77.0.0/24",)
POLICY = Policy(idle_timeout_s=300, max_hold_s=3600, combined_mode=False)
COMBINED = replace(POLICY, combined_mode=True)
S = m.Session(1, "acme", "alice", POLICY, LAN, virtual_ip="10.20.0.200", last_activity=100.0)
PIN = Pin(b"2468")


def auths(effects) -> list[Authenticate]:
    return [e for e in effects if isinstance(e, Authenticate)]


def run(state, events) -> tuple[object, list]:
    """Step through `events`; the last state and every effect."""
    every = []
    for event in events:
        state, effects = m.step(state, event)
        every.extend(effects)
    return state, every


def opening(policy: Policy, proof: str = PROOF) -> list:
    """From Idle: alice taps (with `proof`), acme's profile, tunnel and print service come up."""
    return [CardTapped(200.0, "alice", "acme", "04A1B2C3D4E5F6", proof=proof),
            ProfileFetched(201.0, 1, "acme", ("10.20.0.0/24",), policy, OWN),
            TunnelUp(202.0, 1, "10.20.0.200", ("10.20.0.0/24",)),
            PrintServiceUp(203.0, 1)]


def test_a_tap_in_ready_forwards_its_proof():
    state, effects = m.step(m.Ready(S), CardTapped(200.0, "alice", "acme", "04A1", proof=PROOF))
    assert isinstance(state, m.Authenticating)
    assert auths(effects) == [Authenticate(1, 1, "alice", "acme", proof=PROOF)]
    assert PROOF not in repr(effects) + repr(state)


def test_a_tap_without_a_proof_sends_none():
    _, effects = m.step(m.Ready(S), CardTapped(200.0, "alice", "acme", "04A1"))
    assert auths(effects) == [Authenticate(1, 1, "alice", "acme")]
    assert auths(effects)[0].proof == ""


def test_the_pin_answer_never_carries_the_proof():
    state, effects = run(m.Ready(S), [CardTapped(200.0, "alice", "acme", "04A1", proof=PROOF),
                                      AuthPinRequired(201.0, 1, 1, "alice", b"\x01chal", "Enter PIN"),
                                      PinEntered(205.0, 1, PIN)])
    first, answer = auths(effects)
    assert first.proof == PROOF and first.pin is None and first.state is None
    assert answer == Authenticate(1, 2, "alice", "acme", pin=PIN, state=b"\x01chal")
    assert answer.proof == ""
    assert isinstance(state, m.Authenticating) and PROOF not in repr(state)


def test_combined_mode_forwards_the_openers_proof_once():
    state, effects = run(m.Idle(0), opening(COMBINED))
    assert isinstance(state, m.Authenticating) and state.user == "alice"
    assert auths(effects) == [Authenticate(1, 1, "alice", "acme", proof=PROOF)]
    assert state.s.opener_proof == ""  # used up
    # the server asks for the PIN: the answer goes without it; a later tap without a proof too
    state, effects = run(state, [AuthPinRequired(204.0, 1, 1, "alice", b"\x02chal", "Enter PIN"),
                                 PinEntered(205.0, 1, PIN),
                                 AuthRejected(206.0, 1, 2, "alice", "Wrong PIN"),
                                 CardTapped(210.0, "alice", "acme", "04A1")])
    assert [a.proof for a in auths(effects)] == ["", ""]
    assert auths(effects)[0].pin is PIN


def test_combined_mode_each_step_holds_the_proof_until_it_is_used():
    tap, fetched, up, _ = opening(COMBINED)
    looking, _ = m.step(m.Idle(0), tap)
    assert isinstance(looking, m.LookingUp) and looking.proof == PROOF
    connecting, _ = m.step(looking, fetched)
    assert isinstance(connecting, m.Connecting) and connecting.s.opener_proof == PROOF
    starting, _ = m.step(connecting, up)
    assert starting.s.opener_proof == PROOF
    assert PROOF not in repr(looking) + repr(connecting) + repr(starting)


def test_without_combined_mode_the_openers_proof_is_dropped_unused():
    state, effects = run(m.Idle(0), opening(POLICY))
    assert isinstance(state, m.Ready) and state.s.opener_proof == ""
    assert auths(effects) == []
    # the next tap authenticates with its own proof, never the opener's
    _, effects = m.step(state, CardTapped(210.0, "alice", "acme", "04A1", proof=OTHER_PROOF))
    assert [a.proof for a in auths(effects)] == [OTHER_PROOF]


def test_combined_mode_a_locked_opener_sends_nothing_and_the_proof_is_dropped():
    state, effects = run(m.Idle(0), [replace(opening(COMBINED)[0], pin_locked=True), *opening(COMBINED)[1:]])
    assert isinstance(state, m.Ready) and auths(effects) == [] and state.s.opener_proof == ""


def test_a_tap_of_another_org_keeps_its_proof_through_the_switch():
    tap = CardTapped(200.0, "carol", "globex", "04CC", proof=OTHER_PROOF)
    switching, _ = m.step(m.Ready(S), tap)
    assert isinstance(switching, m.Switching) and switching.to.proof == OTHER_PROOF
    # the serving session's tunnel drops meanwhile: the remembered tap keeps the proof
    purging, _ = m.step(switching, TunnelDown(201.0, 1))
    assert purging.then.proof == OTHER_PROOF
    looking, _ = m.step(purging, PurgeDone(202.0, 1, True))
    assert isinstance(looking, m.LookingUp) and looking.proof == OTHER_PROOF
    # the usual way: globex's profile arrives, acme's session is purged, globex connects with it
    fetched = ProfileFetched(201.0, 2, "globex", ("10.30.0.0/24",), COMBINED, OWN)
    state, _ = run(switching, [fetched, PurgeDone(203.0, 1, True)])
    assert isinstance(state, m.Connecting) and state.s.opener_proof == OTHER_PROOF
    state, effects = run(state, [TunnelUp(204.0, 2, "10.30.0.200", ("10.30.0.0/24",)), PrintServiceUp(205.0, 2)])
    assert auths(effects) == [Authenticate(2, 1, "carol", "globex", proof=OTHER_PROOF)]
