"""The badge writer's images (hal/card/badge_write.py) read back by the readers' parsers:
read(write(x)) == x for Type 2, 3 and 4, and what does not fit is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hal.card import BadgeInvalidId, BadgeTooLong
from hal.card.badge import MAX_NDEF, Badge, decode_badge
from hal.card.badge_write import (NTAG213_DATA, NTAG215_DATA, ULTRALIGHT_DATA, badge_message, ndef_tlv,
                                  type2_cc, type2_image, type2_user_pages, type3_blocks, type4_files)
from hal.card.type2 import read_ndef as read_type2
from hal.card.type3 import parse_attribute_block, read_ndef as read_type3
from hal.card.type4 import read_card
from lab.vcard import CardImage, Type4Applet

UID = bytes.fromhex("04a1b2c3d4e5f6")
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)


def type2_reader(memory: bytes):
    return lambda page: (memory + memory)[page * 4 % len(memory):][:16]


def type3_reader(blocks: list[bytes]):
    return lambda numbers: b"".join(blocks[n] for n in numbers)


def type4_reader(cc: bytes, ndef: bytes):
    from hal.card.badge import CC_FILE_ID, NDEF_FILE_ID
    applet = Type4Applet(CardImage(UID, files={CC_FILE_ID: cc, NDEF_FILE_ID: ndef}))
    return applet.process


@settings(max_examples=150, deadline=None)
@given(user=ids, org=ids)
def test_every_badge_reads_back_on_every_type(user, org):
    message = badge_message(user, org)
    badge = Badge(user, org)
    assert decode_badge(read_type2(type2_reader(type2_image(message, UID, NTAG215_DATA)))) == badge
    assert decode_badge(read_type3(type3_reader(type3_blocks(message)))) == badge
    assert read_card(type4_reader(*type4_files(message)))[1] == badge


@settings(max_examples=100, deadline=None)
@given(message=st.binary(min_size=1, max_size=MAX_NDEF))
def test_any_message_reads_back(message):
    assert read_type2(type2_reader(type2_image(message, UID, 872))) == message
    assert read_type3(type3_reader(type3_blocks(message, nmaxb=32))) == message
    from hal.card.type4 import read_ndef as read_type4
    assert read_type4(type4_reader(*type4_files(message))) == message


def test_type2_layout():
    message = badge_message("alice", "acme")
    pages = type2_user_pages(message, NTAG213_DATA)
    assert pages[:2] == bytes([0x03, len(message)]) and pages[2 + len(message)] == 0xFE and len(pages) % 4 == 0
    assert type2_cc(NTAG213_DATA) == bytes.fromhex("E1101200")
    assert type2_cc(NTAG215_DATA, read_only=True) == bytes.fromhex("E1103E0F")
    assert ndef_tlv(bytes(300))[:4] == bytes.fromhex("03FF012C")
    image = type2_image(message, UID)
    assert image[:3] == UID[:3] and image[3] == 0x88 ^ UID[0] ^ UID[1] ^ UID[2]
    assert len(image) == 16 + NTAG213_DATA


def test_type3_attribute_block():
    message = badge_message("alice", "acme")
    blocks = type3_blocks(message)
    info = parse_attribute_block(blocks[0])
    assert (info.nbr, info.nmaxb, info.length, info.writable) == (4, 13, len(message), True)
    assert len(blocks) == 1 + -(-len(message) // 16)
    assert not parse_attribute_block(type3_blocks(message, read_only=True)[0]).writable


def test_what_does_not_fit_is_refused():
    long_badge = badge_message("a" * 64, "b" * 64)
    with pytest.raises(BadgeTooLong):
        type2_user_pages(long_badge, ULTRALIGHT_DATA)
    with pytest.raises(BadgeTooLong):
        type3_blocks(bytes(300))  # a Lite-S NDEF area holds 208 bytes
    with pytest.raises(BadgeTooLong):
        type4_files(bytes(MAX_NDEF + 1))
    with pytest.raises(BadgeInvalidId):
        badge_message("alice smith", "acme")
    with pytest.raises(ValueError):
        type2_cc(100)
