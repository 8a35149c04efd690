"""Reading a badge from an NFC Forum Type 3 tag (FeliCa Lite-S with NDEF), whatever reads blocks.

`read_ndef(read_blocks)` takes a function that reads 16-byte blocks of the NDEF service (service
code 0x000B, system 0x12FC) with one Check (Read Without Encryption) command — nfcpy's
`Type3Tag.read_without_encryption` or a reader's FeliCa pass-through — and returns the NDEF message.
Block 0 is the attribute information block: version, Nbr (blocks per Check), Nmaxb (size of the
NDEF area), WriteF, RWFlag, Ln (message length) and a checksum. Ln is checked against Nmaxb and
MAX_NDEF before anything else is read, so at most `1 + ceil(MAX_NDEF / 16)` blocks in at most
`MAX_READS` commands are read whatever the tag answers.

A read function raises `TagRefusedRead` when the tag answers with error status flags and
`CardCommunicationError` when it does not answer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Sequence

from hal.card import BadAttributeBlock, BadgeMalformed, BadgeTooLong, NoBadge, TagRefusedRead
from hal.card.badge import MAX_NDEF, Badge, decode_badge

ReadBlocks = Callable[[Sequence[int]], bytes]

BLOCK = 16
NDEF_SYSTEM_CODE = 0x12FC
NDEF_READ_SERVICE = 0x000B
WRITE_IN_PROGRESS = 0x0F
MAX_BLOCKS_PER_READ = 4
"""Blocks asked per Check, below the tag's Nbr: FeliCa Lite-S takes 4, and short frames keep nfcpy's
per-block timeout small."""
MAX_READS = 1 + -(-MAX_NDEF // BLOCK)


@dataclass(frozen=True)
class AttributeInfo:
    version: int
    nbr: int    # blocks one Check may read
    nbw: int    # blocks one Update may write
    nmaxb: int  # blocks of the NDEF area (after block 0)
    write_flag: int
    rw_flag: int
    length: int  # Ln: bytes of the NDEF message

    @property
    def writable(self) -> bool:
        return self.rw_flag == 0x01


def checksum(block: bytes) -> int:
    return sum(block[:14]) & 0xFFFF


def parse_attribute_block(block: bytes) -> AttributeInfo:
    """Validate block 0 of the NDEF service."""
    if len(block) != BLOCK:
        raise BadAttributeBlock(f"attribute block is {len(block)} bytes, not {BLOCK}")
    version, nbr, nbw, nmaxb = block[0], block[1], block[2], struct.unpack(">H", block[3:5])[0]
    write_flag, rw_flag = block[9], block[10]
    length = int.from_bytes(block[11:14], "big")
    if struct.unpack(">H", block[14:16])[0] != checksum(block):
        raise BadAttributeBlock("attribute block checksum mismatch")
    if version >> 4 != 1:
        raise BadAttributeBlock(f"unsupported mapping version {version >> 4}.{version & 15}")
    if nbr == 0 or nmaxb == 0:
        raise BadAttributeBlock(f"Nbr {nbr} / Nmaxb {nmaxb} must not be 0")
    if write_flag not in (0x00, WRITE_IN_PROGRESS):
        raise BadAttributeBlock(f"WriteF {write_flag:02x} is neither 00 nor 0F")
    if rw_flag not in (0x00, 0x01):
        raise BadAttributeBlock(f"RWFlag {rw_flag:02x} is neither 00 nor 01")
    return AttributeInfo(version, nbr, nbw, nmaxb, write_flag, rw_flag, length)


def check_length(info: AttributeInfo) -> None:
    """Bound the message length before reading it."""
    if info.write_flag == WRITE_IN_PROGRESS:
        raise BadgeMalformed("a write to the tag was interrupted (WriteF is 0F)")
    if info.length == 0:
        raise NoBadge("the NDEF area is empty")
    if info.length > info.nmaxb * BLOCK:
        raise BadgeTooLong(f"Ln {info.length} exceeds the tag's NDEF area of {info.nmaxb * BLOCK}")
    if info.length > MAX_NDEF:
        raise BadgeTooLong(f"Ln {info.length} exceeds the badge limit {MAX_NDEF}")


def _read(read_blocks: ReadBlocks, blocks: list[int]) -> bytes:
    data = read_blocks(blocks)
    if len(data) != BLOCK * len(blocks):
        raise BadgeMalformed(f"Check of {len(blocks)} blocks returned {len(data)} bytes")
    return bytes(data)


def read_ndef(read_blocks: ReadBlocks) -> bytes:
    """The NDEF message on the tag, bounded by its attribute block and by MAX_NDEF."""
    try:
        info = parse_attribute_block(_read(read_blocks, [0]))
    except TagRefusedRead:
        raise NoBadge("the tag has no readable NDEF service") from None
    check_length(info)
    count = -(-info.length // BLOCK)
    per_read = max(1, min(info.nbr, MAX_BLOCKS_PER_READ))
    out = bytearray()
    for first in range(1, count + 1, per_read):
        out += _read(read_blocks, list(range(first, min(first + per_read, count + 1))))
    return bytes(out[:info.length])


def read_badge(read_blocks: ReadBlocks) -> Badge:
    """The badge on the Type 3 tag behind `read_blocks`; typed `CardDataError`s otherwise."""
    return decode_badge(read_ndef(read_blocks))
