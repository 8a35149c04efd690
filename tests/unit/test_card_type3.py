"""The bounded Type 3 NDEF read (hal/card/type3.py) over a block-read function, malformed attribute
blocks included, and through nfcpy's Type3TagEmulation answering the Check commands."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hal.card import (BadAttributeBlock, BadgeMalformed, BadgeTooLong, CardDataError, NoBadge,
                      TagRefusedRead)
from hal.card.badge import MAX_NDEF, Badge
from hal.card.badge_write import attribute_block, badge_message, type3_blocks
from hal.card.type3 import MAX_BLOCKS_PER_READ, MAX_READS, checksum, parse_attribute_block, read_badge, read_ndef

ALICE = badge_message("alice", "acme")


class Tag:
    """The NDEF service's blocks; a missing block is refused like a FeliCa status A2."""

    def __init__(self, blocks: list[bytes], *, short: bool = False, refuse: bool = False):
        self.blocks, self.short, self.refuse = blocks, short, refuse
        self.reads: list[list[int]] = []

    def __call__(self, numbers) -> bytes:
        numbers = list(numbers)
        self.reads.append(numbers)
        if self.refuse or any(n >= len(self.blocks) for n in numbers):
            raise TagRefusedRead("status 01a2")
        data = b"".join(self.blocks[n] for n in numbers)
        return data[:-1] if self.short else data


def block0(length: int, **kw) -> bytes:
    return attribute_block(length, **{"nmaxb": 13, **kw})


def with_sum(body14: bytes) -> bytes:
    return body14 + checksum(body14).to_bytes(2, "big")


def test_reads_a_badge_in_blocks_of_nbr():
    tag = Tag(type3_blocks(ALICE))
    assert read_badge(tag) == Badge("alice", "acme")
    assert tag.reads[0] == [0]
    assert all(len(r) <= MAX_BLOCKS_PER_READ for r in tag.reads)
    assert sum(len(r) for r in tag.reads[1:]) == -(-len(ALICE) // 16)


def test_nbr_1_reads_one_block_at_a_time():
    tag = Tag(type3_blocks(ALICE, nbr=1))
    assert read_ndef(tag) == ALICE
    assert all(len(r) == 1 for r in tag.reads)


def test_attribute_fields():
    info = parse_attribute_block(block0(70, nbr=4, nbw=1, read_only=True))
    assert (info.version, info.nbr, info.nbw, info.nmaxb, info.length, info.writable) == (0x10, 4, 1, 13, 70, False)


@pytest.mark.parametrize("name, blocks, error", [
    ("checksum", [block0(len(ALICE))[:15] + b"\x00"] + type3_blocks(ALICE)[1:], BadAttributeBlock),
    ("version 2", [with_sum(b"\x20" + block0(len(ALICE))[1:14])] + type3_blocks(ALICE)[1:], BadAttributeBlock),
    ("Nbr 0", [with_sum(b"\x10\x00" + block0(len(ALICE))[2:14])], BadAttributeBlock),
    ("Nmaxb 0", [with_sum(b"\x10\x04\x01\x00\x00" + block0(len(ALICE))[5:14])], BadAttributeBlock),
    ("WriteF 0x55", [with_sum(block0(len(ALICE))[:9] + b"\x55" + block0(len(ALICE))[10:14])], BadAttributeBlock),
    ("RWFlag 7", [with_sum(block0(len(ALICE))[:10] + b"\x07" + block0(len(ALICE))[11:14])], BadAttributeBlock),
    ("write interrupted", [with_sum(block0(len(ALICE))[:9] + b"\x0f" + block0(len(ALICE))[10:14])]
     + type3_blocks(ALICE)[1:], BadgeMalformed),
    ("Ln 0", [block0(0)], NoBadge),
    ("Ln past Nmaxb", [block0(13 * 16 + 1)], BadgeTooLong),
    ("Ln past the badge limit", [block0(600, nmaxb=100)], BadgeTooLong),
    ("blocks missing", type3_blocks(ALICE)[:2], TagRefusedRead),
    ("text record", type3_blocks(bytes.fromhex("d10107540265") + b"nabcd"), CardDataError),
])
def test_malformed_tags(name, blocks, error):
    with pytest.raises(error):
        read_badge(Tag(blocks))


def test_no_ndef_service_is_no_badge():
    with pytest.raises(NoBadge):
        read_ndef(Tag([], refuse=True))


def test_short_check_answer_is_malformed():
    with pytest.raises(BadgeMalformed):
        read_ndef(Tag(type3_blocks(ALICE), short=True))


def test_huge_length_is_refused_before_reading_it():
    tag = Tag([block0(0xFFFFFF, nmaxb=0xFFFF)])
    with pytest.raises(BadgeTooLong):
        read_ndef(tag)
    assert tag.reads == [[0]]


@settings(max_examples=400, deadline=None)
@given(block=st.binary(min_size=14, max_size=14), data=st.lists(st.binary(min_size=16, max_size=16), max_size=40),
       fix_sum=st.booleans())
def test_fuzz_any_tag_gives_a_badge_or_a_typed_error_in_bounded_reads(block, data, fix_sum):
    first = with_sum(block) if fix_sum else block + b"\x00\x00"
    tag = Tag([first] + data)
    try:
        read_badge(tag)
    except CardDataError:
        pass
    assert len(tag.reads) <= MAX_READS
    assert sum(len(r) for r in tag.reads) <= 1 + -(-MAX_NDEF // 16)


def test_through_nfcpy_type3_tag_emulation():
    """The same Check commands nfcpy's Type3Tag sends, answered by nfcpy's own emulation."""
    nfc_clf = pytest.importorskip("nfc.clf")
    from nfc.tag.tt3 import BlockCode, ServiceCode, Type3TagEmulation

    blocks = type3_blocks(ALICE)
    idm = bytes.fromhex("012e4cf1a2b3c4d5")
    target = nfc_clf.LocalTarget("212F", sensf_res=bytearray(b"\x01" + idm + bytes(8) + b"\x12\xfc"),
                                 tt3_cmd=bytearray(b"\x00"))
    emu = Type3TagEmulation(None, target)
    emu.add_service(0x000B, lambda n, rb, re: bytearray(blocks[n]) if n < len(blocks) else None, None)

    def read_blocks(numbers) -> bytes:
        body = b"\x01" + ServiceCode(0, 0x0B).pack() + bytes([len(numbers)]) \
            + b"".join(BlockCode(n).pack() for n in numbers)
        cmd = bytearray([10 + len(body), 0x06]) + idm + body
        rsp = emu.process_command(cmd)
        assert rsp[1] == 0x07 and rsp[10:12] == b"\x00\x00"
        return bytes(rsp[13:])

    assert read_badge(read_blocks) == Badge("alice", "acme")
