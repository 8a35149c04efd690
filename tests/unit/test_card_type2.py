"""The bounded Type 2 NDEF read (hal/card/type2.py) over a page-read function, malformed tags included,
and the PC/SC pieces that lead to it (the storage-card ATR, FF B0 READ BINARY)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hal.card import (KIND_MIFARE_CLASSIC, KIND_TYPE2, KIND_TYPE3, KIND_TYPE4, BadCapabilityContainer,
                      BadgeMalformed, BadgeTooLong, BadgeWrongType, CardCommunicationError, CardDataError,
                      NoBadge, TagRefusedRead)
from hal.card.atr import card_kind, storage_atr
from hal.card.badge import MAX_NDEF, Badge
from hal.card.badge_write import badge_message, type2_cc, type2_image, type2_user_pages
from hal.card.type2 import MAX_READS, pcsc_read_page, read_badge, read_ndef

UID = bytes.fromhex("04a1b2c3d4e5f6")
ALICE = badge_message("alice", "acme")


class Tag:
    """Pages of a memory image; READ gives 4 pages and wraps, like an NTAG."""

    def __init__(self, memory: bytes, *, nak_from: int | None = None, short: bool = False):
        self.memory, self.nak_from, self.short = memory, nak_from, short
        self.reads: list[int] = []

    def __call__(self, page: int) -> bytes:
        self.reads.append(page)
        if self.nak_from is not None and page >= self.nak_from:
            raise TagRefusedRead(f"NAK for page {page}")
        start = page * 4 % len(self.memory)
        data = (self.memory + self.memory)[start:start + 16]
        return data[:8] if self.short else data


def raw(cc: bytes, data: bytes, size: int = 144) -> Tag:
    return Tag(type2_image(None, UID, size)[:12] + cc + data + bytes(size - len(data)))


def test_reads_a_badge_in_few_reads():
    tag = Tag(type2_image(ALICE, UID))
    assert read_badge(tag) == Badge("alice", "acme")
    assert tag.reads[0] == 3 and len(tag.reads) == 1 + -(-(len(ALICE) + 3 - 12) // 16)


def test_skips_null_lock_and_memory_control_tlvs():
    data = b"\x00\x00" + b"\x01\x03\xa0\x0c\x34" + b"\x02\x03\x00\x00\x00" + b"\xfd\x02zz" + b"\x03" \
        + bytes([len(ALICE)]) + ALICE + b"\xfe"
    assert read_ndef(raw(type2_cc(144), data)) == ALICE


def test_three_byte_length_under_255_is_not_canonical():
    msg = badge_message("a" * 64, "b" * 64)
    assert len(msg) < 0xFF
    data = b"\x03\xff" + len(msg).to_bytes(2, "big") + msg
    with pytest.raises(BadgeMalformed):  # a 3-byte length under 255 is not canonical
        read_ndef(raw(type2_cc(496), data, 496))


@pytest.mark.parametrize("name, cc, data, error", [
    ("blank tag", bytes(4), b"", NoBadge),
    ("not E1", b"\xe2\x10\x12\x00", b"\x03\x00", NoBadge),
    ("mapping 2.0", b"\xe1\x20\x12\x00", b"\x03\x00", BadCapabilityContainer),
    ("no data area", b"\xe1\x10\x00\x00", b"", BadCapabilityContainer),
    ("read protected", b"\xe1\x10\x12\x80", b"", BadCapabilityContainer),
    ("terminator first", type2_cc(144), b"\xfe", NoBadge),
    ("empty NDEF TLV", type2_cc(144), b"\x03\x00\xfe", NoBadge),
    ("NDEF past data area", type2_cc(144), b"\x03\xff\x01\x00" + ALICE, BadgeTooLong),
    ("1-byte length past data area", type2_cc(48), b"\x03\xf0" + ALICE, BadgeTooLong),
    ("unknown TLV", type2_cc(144), b"\x07\x01\x00", BadgeMalformed),
    ("only NULL TLVs", type2_cc(48), b"", BadgeMalformed),
    ("lock TLV running off", type2_cc(48), b"\x01\xff\x00\xff", BadgeMalformed),
    ("text record", type2_cc(144), b"\x03\x0b\xd1\x01\x07T\x02enabcd\xfe", BadgeWrongType),
])
def test_malformed_tags(name, cc, data, error):
    with pytest.raises(error):
        read_badge(raw(cc, data))


def test_huge_message_is_refused_before_reading_it():
    tag = raw(type2_cc(2040), b"\x03\xff\x07\xd0" + ALICE, 2040)
    with pytest.raises(BadgeTooLong):
        read_ndef(tag)
    assert len(tag.reads) == 1


def test_ndef_after_60_bytes_of_padding_tlvs_is_refused():
    data = b"\xfd\xff\x02\x40" + bytes(0x240) + b"\x03" + bytes([len(ALICE)]) + ALICE
    with pytest.raises(BadgeMalformed):
        read_ndef(raw(type2_cc(2040), data, 2040))


def test_nak_on_the_cc_page_is_no_badge_and_later_is_malformed():
    with pytest.raises(NoBadge):
        read_ndef(Tag(type2_image(ALICE, UID), nak_from=3))
    with pytest.raises(TagRefusedRead):
        read_ndef(Tag(type2_image(ALICE, UID), nak_from=7))


def test_short_read_is_malformed():
    with pytest.raises(BadgeMalformed):
        read_ndef(Tag(type2_image(ALICE, UID), short=True))


@settings(max_examples=400, deadline=None)
@given(cc=st.binary(min_size=4, max_size=4), data=st.binary(max_size=700),
       size=st.sampled_from([48, 144, 496, 2040]))
def test_fuzz_any_tag_gives_a_badge_or_a_typed_error_in_bounded_reads(cc, data, size):
    tag = Tag(type2_image(None, UID, size)[:12] + cc + data + bytes(max(0, size - len(data))))
    try:
        read_badge(tag)
    except CardDataError:
        pass
    assert len(tag.reads) <= MAX_READS


def test_written_pages_read_back():
    pages = type2_user_pages(ALICE, 144)
    assert read_ndef(raw(type2_cc(144), pages)) == ALICE


# -- PC/SC: which cards are Type 2, and FF B0 ---------------------------------------------------

def test_storage_card_atrs():
    assert storage_atr(0x0003).hex() == "3b8f8001804f0ca0000003060300030000000068"
    assert card_kind(storage_atr(0x0003)) == KIND_TYPE2
    assert card_kind(storage_atr(0x003A)) == KIND_TYPE2
    assert card_kind(storage_atr(0x0001)) == KIND_MIFARE_CLASSIC
    assert card_kind(storage_atr(0xF011, standard=0x11)) == KIND_TYPE3
    assert card_kind(bytes.fromhex("3B80800101")) == KIND_TYPE4  # ISO 14443-4, no historical bytes
    assert card_kind(b"") == KIND_TYPE4


def test_pcsc_read_binary_pages():
    memory = type2_image(ALICE, UID)
    apdus = []

    def transmit(apdu: bytes) -> bytes:
        apdus.append(apdu)
        if apdu[:3] != b"\xff\xb0\x00" or apdu[4] != 0x10:
            return b"\x6d\x00"
        if apdu[3] * 4 >= len(memory):
            return b"\x6a\x82"
        return (memory + memory)[apdu[3] * 4:apdu[3] * 4 + 16] + b"\x90\x00"

    assert read_badge(pcsc_read_page(transmit)) == Badge("alice", "acme")
    assert apdus[0] == bytes.fromhex("FFB0000310")
    with pytest.raises(TagRefusedRead):
        pcsc_read_page(transmit)(200)
    with pytest.raises(CardCommunicationError):
        pcsc_read_page(lambda apdu: b"\x90")(3)
    with pytest.raises(NoBadge):  # refused CC page: not a Type 2 tag
        read_ndef(pcsc_read_page(lambda apdu: b"\x69\x81"))


def test_max_reads_covers_the_largest_badge():
    assert MAX_READS * 16 >= MAX_NDEF


def test_pcsc_reader_reads_a_type2_storage_card_answering_like_lab_vcard_type2():
    """PcscReader's per-card logic against the vpcd card's applet (the ATR picks the Type 2 path)."""
    from types import SimpleNamespace

    from hal.card import CardTap, CardUid, CardUnreadable
    from hal.card.pcsc import PcscReader
    from lab.vcard_type2 import ATR, Type2StorageApplet

    def event(memory, uid_cards=True):
        applet = Type2StorageApplet(UID, memory)
        me = SimpleNamespace(uid_cards=uid_cards)
        return PcscReader._card_event(me, applet.process, "Virtual PCD 00 00", 0.0, card_kind(ATR))

    tap = event(type2_image(ALICE, UID))
    assert tap == CardTap(UID, "alice", "acme", "Virtual PCD 00 00") and tap.kind == KIND_TYPE2
    assert event(type2_image(None, UID)) == CardUid(UID, KIND_TYPE2, "Virtual PCD 00 00")
    blank = event(type2_image(None, UID), uid_cards=False)
    assert isinstance(blank, CardUnreadable) and isinstance(blank.error, NoBadge)
