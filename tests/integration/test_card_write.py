"""`tenantprint card write` end to end through nfcpy's `udp` driver against lab/nfc_sim.py: the CLI
writes a badge on a Type 2, 3 and 4 card, then the real NfcpyReader reads it as a tap; `--lock`
makes the card read-only so that a second write is refused; cards that cannot be locked are refused
before anything is written. No hardware; loopback UDP only."""

from __future__ import annotations

import asyncio
import json

import pytest

from prereq import need

from hal.card import KIND_TYPE2, KIND_TYPE3, KIND_TYPE4, CardRemoved, CardTap, CardUid, mask_uid, open_reader
from hal.card import type2
from hal.card.badge import cc_file
from hal.card.badge_write import (attribute_block, badge_message, type2_cc, type2_header, type2_image,
                                  type3_blocks, type4_files)
from hal.card.cli import EXIT_OK, EXIT_REFUSED, WRITABLE_WARNING, main
from hal.card.writer import DYNAMIC_LOCK_PAGE, Pcsc2, write_type2

try:
    import nfc  # noqa: F401
    from lab.nfc_sim import NfcSim, Type2Card, Type3Card, Type4Card
except ImportError:  # pragma: no cover - the venv has nfcpy
    NfcSim = None

UID7 = bytes.fromhex("04a1b2c3d4e5f6")
IDM = bytes.fromhex("012e4cf1a2b3c4d5")


@pytest.fixture
def sim():
    need(NfcSim is not None, "nfcpy installed in the venv")
    s = NfcSim().start()
    yield s
    s.stop()


def blank_ntag():
    """An NTAG213 as sold: formatted (CC E1 10 12 00), an empty NDEF TLV."""
    return Type2Card(UID7, type2_header(UID7) + type2_cc(144) + b"\x03\x00\xfe" + bytes(141))


def unformatted_ntag():
    return Type2Card(UID7, type2_image(None, UID7))


def blank_lite_s():
    return Type3Card(IDM, [attribute_block(0, nmaxb=13)])


def blank_type4(**kw):
    return Type4Card(UID7, cc_file(write_access=0x00), b"\x00\x00", **kw)


CARDS = {"type2": (blank_ntag, KIND_TYPE2, UID7), "type2-unformatted": (unformatted_ntag, KIND_TYPE2, UID7),
         "type3": (blank_lite_s, KIND_TYPE3, IDM), "type4": (blank_type4, KIND_TYPE4, UID7)}


def write(capsys, sim, *extra, user="alice", org="acme"):
    """Run `tenantprint card write` in-process; (exit status, JSON printed or None, stderr)."""
    rc = main(["write", "--org", org, "--user", user, "--reader", f"nfcpy:{sim.path}", "--wait", "5", *extra])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip() else None), err


def read_event(sim, card):
    """What the firmware's NfcpyReader makes of `card`."""
    async def scenario():
        reader = open_reader("nfcpy", path=sim.path)
        events = reader.events()
        try:
            sim.present(card)
            event = await asyncio.wait_for(events.__anext__(), 5)
            sim.remove()
            assert await asyncio.wait_for(events.__anext__(), 5) == CardRemoved(sim.path)
            return event
        finally:
            await reader.close()
    return asyncio.run(scenario())


@pytest.mark.parametrize("name", sorted(CARDS))
def test_written_badge_is_read_by_the_firmware_reader(capsys, sim, name):
    make, kind, uid = CARDS[name]
    card = make()
    sim.present(card)
    rc, out, err = write(capsys, sim)
    sim.remove()
    assert rc == EXIT_OK, err
    assert out["type"] == kind and out["uid"] == mask_uid(uid) and uid.hex() not in json.dumps(out)
    assert out["bytes"] == len(badge_message("alice", "acme")) and out["locked"] is False
    assert WRITABLE_WARNING in err
    event = read_event(sim, card)
    assert event == CardTap(uid, "alice", "acme", sim.path) and event.kind == kind


@pytest.mark.parametrize("name", ["type2", "type3"])
def test_locked_card_refuses_a_second_write(capsys, sim, name):
    make, kind, uid = CARDS[name]
    card = make()
    sim.present(card)
    rc, out, err = write(capsys, sim, "--lock")
    assert rc == EXIT_OK and out["locked"] is True, err
    assert WRITABLE_WARNING not in err
    rc, out, err = write(capsys, sim, user="mallory")
    assert rc == EXIT_REFUSED and out is None and "read-only" in err
    sim.remove()
    assert read_event(sim, card) == CardTap(uid, "alice", "acme", sim.path)


def test_locked_type2_pages_refuse_raw_writes_too(capsys, sim):
    """Not only the CC's advisory byte: the lock bits make the tag NAK writes (a phone app that
    ignores the CC cannot rewrite it)."""
    card = blank_ntag()
    sim.present(card)
    assert write(capsys, sim, "--lock")[0] == EXIT_OK
    assert card.memory[10:12] == b"\xff\xff" and card.memory[15] == 0x0F
    dyn = DYNAMIC_LOCK_PAGE[144] * 4
    assert card.memory[dyn:dyn + 3] == b"\xff\xff\xff"
    for page in (4, 12, 20, 39):
        assert card.command(bytes([0xA2, page]) + b"XXXX") == Type2Card.NAK, page


def test_locked_lite_s_refuses_raw_writes_too(capsys, sim):
    card = blank_lite_s()
    sim.present(card)
    assert write(capsys, sim, "--lock")[0] == EXIT_OK
    assert card.mc[2] == 0x00 and not card._write_block(1, bytearray(16), True, True)


def test_type4_with_a_read_only_cc_is_refused_before_writing_when_lock_is_asked(capsys, sim):
    card = blank_type4()
    sim.present(card)
    rc, out, err = write(capsys, sim, "--lock")
    assert rc == EXIT_REFUSED and "--lock" in err and "Type 2 or Type 3" in err
    sim.remove()
    assert read_event(sim, card) == CardUid(UID7, KIND_TYPE4, sim.path)  # untouched


def test_type4_that_lets_its_cc_change_is_locked(capsys, sim):
    card = blank_type4(cc_writable=True)
    sim.present(card)
    rc, out, err = write(capsys, sim, "--lock")
    assert rc == EXIT_OK and out["locked"] is True, err
    rc, _, err = write(capsys, sim, user="mallory")
    assert rc == EXIT_REFUSED and "not writable" in err


def test_dry_run_writes_nothing(capsys, sim):
    card = blank_ntag()
    before = bytes(card.memory)
    sim.present(card)
    rc, out, err = write(capsys, sim, "--dry-run", "--lock")
    assert rc == EXIT_OK and out["dry_run"] is True and out["would_lock"] is True and out["locked"] is False
    assert bytes(card.memory) == before


def test_a_badge_is_rewritten_and_a_badge_that_does_not_fit_is_refused(capsys, sim):
    card = Type2Card(UID7, type2_image(badge_message("bob", "acme"), UID7))
    sim.present(card)
    assert write(capsys, sim)[0] == EXIT_OK
    ultralight = Type2Card(UID7, type2_image(None, UID7, data_size=48)[:12] + type2_cc(48) + bytes(48))
    sim.present(ultralight)
    rc, _, err = write(capsys, sim, user="a" * 40, org="b" * 40)
    assert rc == EXIT_REFUSED and "data area has 48" in err
    sim.remove()
    assert read_event(sim, card) == CardTap(UID7, "alice", "acme", sim.path)


def test_no_card_and_bad_ids_are_refused(capsys, sim):
    rc, _, err = main(["write", "--org", "acme", "--user", "alice", "--reader", f"nfcpy:{sim.path}",
                       "--wait", "0.3"]), None, None
    assert rc == EXIT_REFUSED and "no card" in capsys.readouterr().err
    sim.present(blank_ntag())
    rc, _, err = write(capsys, sim, user="not valid!")
    assert rc == EXIT_REFUSED and "not a valid id" in err


def test_pcsc_storage_card_apdus_write_a_type2_tag():
    """`Pcsc2` (FF B0 / FF D6) against the simulated NTAG behind what a PC/SC part 3 reader does
    with those pseudo-APDUs (READ 30 / WRITE A2, 9000 / 6300)."""
    card = blank_ntag()

    def reader(apdu: bytes) -> bytes:
        if apdu[:2] == b"\xff\xb0":
            rsp = card.command(bytes([0x30, apdu[3]]))
            return rsp + b"\x90\x00" if len(rsp) == 16 else b"\x63\x00"
        if apdu[:2] == b"\xff\xd6" and apdu[4] == 4:
            return b"\x90\x00" if card.command(bytes([0xA2, apdu[3]]) + apdu[5:9]) == Type2Card.ACK else b"\x63\x00"
        return b"\x6d\x00"

    message = badge_message("alice", "acme")
    result = write_type2(Pcsc2(reader), UID7, message, lock=True)
    assert result.locked and type2.read_ndef(type2.pcsc_read_page(reader)) == message
