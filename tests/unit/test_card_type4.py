"""The bounded Type 4 read (hal/card/type4.py), against the lab's card applet as a pure object,
and the nfcpy reader's per-tag logic with a tag object that answers like nfcpy's Type4Tag."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from hal.card import (BadCapabilityContainer, BadgeMalformed, BadgeTooLong, CardCommunicationError,
                      CardDataError, CardTap, CardUnreadable, NoBadge, NoUid)
from hal.card.badge import MAX_NDEF, Badge, cc_file, encode_badge, ndef_file
from hal.card.nfc_reader import tag_event
from hal.card.type4 import read_card
from lab.vcard import CardImage, Type4Applet

UID = bytes.fromhex("04a1b2c3d4e5f6")


class Card:
    def __init__(self, **cmd):
        self.applet = Type4Applet(CardImage.from_command({"uid_hex": UID.hex(), **cmd}))
        self.apdus: list[bytes] = []

    def __call__(self, apdu: bytes) -> bytes:
        self.apdus.append(apdu)
        return self.applet.process(apdu)


def test_reads_uid_and_badge():
    card = Card(user="alice", org="acme")
    assert read_card(card) == (UID, Badge("alice", "acme"))
    # UID, SELECT app, SELECT CC, READ CC, SELECT NDEF, READ NLEN, READ message
    assert len(card.apdus) == 7


def test_small_mle_reads_in_chunks():
    msg = encode_badge("a" * 64, "b" * 64)
    card = Card(ndef_hex=msg.hex(), cc_hex=cc_file(max_le=0x0F).hex())
    assert read_card(card)[1] == Badge("a" * 64, "b" * 64)
    reads = [a for a in card.apdus if a[1] == 0xB0]
    assert all(a[4] <= 0x0F for a in reads)
    assert len(reads) == 2 + -(-len(msg) // 0x0F)


def test_no_ndef_app():
    with pytest.raises(NoBadge):
        read_card(Card(no_app=True))


def test_card_claiming_a_huge_ndef_is_refused_before_reading():
    card = Card(ndef_file_hex=(b"\xff\xff" + b"\x00" * 10).hex(), cc_hex=cc_file(max_ndef_file_size=0xFFFE).hex())
    with pytest.raises(BadgeTooLong):
        read_card(card)
    assert not [a for a in card.apdus if a[1] == 0xB0 and a[2:4] != b"\x00\x00"]


def test_empty_chunks_end_the_read_at_once():
    card = Card(user="alice", org="acme", empty_reads=True)
    with pytest.raises(BadgeMalformed):
        read_card(card)
    assert len(card.apdus) == 7


def test_short_file_is_malformed():
    card = Card(ndef_file_hex=(struct.pack(">H", 100) + b"\xd2").hex())
    with pytest.raises(BadgeMalformed):
        read_card(card)


def test_bad_cc():
    with pytest.raises(BadCapabilityContainer):
        read_card(Card(user="a", org="b", cc_hex=cc_file(version=0x30).hex()))


def test_cc_pointing_to_missing_file():
    with pytest.raises(BadgeMalformed):
        read_card(Card(user="a", org="b", cc_hex=cc_file(file_id=0xE105).hex()))


def test_no_uid():
    with pytest.raises(NoUid):
        read_card(lambda apdu: b"\x6a\x81")


def test_response_without_status_word():
    with pytest.raises(CardCommunicationError):
        read_card(lambda apdu: b"\x90")


@settings(max_examples=400, deadline=None)
@given(cc=st.binary(min_size=0, max_size=20), ndef=st.binary(max_size=700), empty=st.booleans())
def test_fuzz_any_card_gives_a_badge_or_a_typed_error_in_bounded_apdus(cc, ndef, empty):
    card = Card(cc_hex=cc.hex(), ndef_file_hex=ndef.hex(), empty_reads=empty)
    try:
        read_card(card)
    except CardDataError:
        pass
    # UID + 3 selects + CC read + NLEN read + at most ceil(512 / 15) chunks
    assert len(card.apdus) <= 6 + -(-MAX_NDEF // 0x0F)


class FakeType4Tag:
    """Answers like nfcpy's Type4Tag: `type`, `identifier`, `transceive(apdu) -> bytes`."""
    type = "Type4Tag"

    def __init__(self, **cmd):
        self.identifier = bytearray(UID)
        self.card = Card(**cmd)

    def transceive(self, data, timeout=None):
        return bytearray(self.card(bytes(data)))


def test_nfcpy_tag_gives_a_tap_with_the_anticollision_uid():
    tag = FakeType4Tag(user="alice", org="acme")
    event = tag_event(tag, "usb:072f:2200")
    assert event == CardTap(UID, "alice", "acme", "usb:072f:2200")
    assert not any(a[:2] == b"\xff\xca" for a in tag.card.apdus)  # not PC/SC: no FF CA


def test_nfcpy_bad_tag_is_unreadable_without_looping():
    tag = FakeType4Tag(user="alice", org="acme", empty_reads=True)
    event = tag_event(tag, "udp")
    assert isinstance(event, CardUnreadable) and isinstance(event.error, BadgeMalformed)
    assert len(tag.card.apdus) == 6


def test_nfcpy_type2_tag_is_unreadable():
    class Type2:
        type, identifier = "Type2Tag", b"\x04\x01\x02\x03\x04\x05\x06"
    event = tag_event(Type2(), "udp")
    assert isinstance(event, CardUnreadable) and isinstance(event.error, NoBadge)


def test_nfcpy_tag_gone_mid_read_yields_nothing():
    import nfc.clf

    class Gone(FakeType4Tag):
        def transceive(self, data, timeout=None):
            raise nfc.clf.TimeoutError("gone")
    assert tag_event(Gone(user="a", org="b"), "udp") is None
