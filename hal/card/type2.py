"""Reading a badge from an NFC Forum Type 2 tag (NTAG21x, MIFARE Ultralight), whatever reads pages.

`read_ndef(read_page)` takes a function that returns the 16 bytes of 4 pages from a page number —
nfcpy's Type 2 READ (`30 pp`) or PC/SC's `FF B0 00 pp 10` READ BINARY — and returns the NDEF
message. The capability container (CC, page 3) gives the data area's size (from page 4); the data
area holds TLVs: NULL (00) skipped, Lock/Memory Control (01/02) and proprietary (FD) skipped by
their length, Terminator (FE) ends it, NDEF (03) holds the message. Every length is checked before
it is used: no read past the CC's data area or past `SCAN_LIMIT` bytes of it, so at most
`1 + SCAN_LIMIT / 16` reads are made whatever the tag answers. The reserved areas that a Memory
Control TLV declares are not skipped: on NTAG21x and Ultralight they lie after the data area.

A read function raises `TagRefusedRead` for a NAK (a page that does not exist or is protected) and
`CardCommunicationError` when the tag does not answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hal.card import (BadCapabilityContainer, BadgeMalformed, BadgeTooLong, CardCommunicationError, NoBadge,
                      TagRefusedRead)
from hal.card.badge import MAX_NDEF, Badge, decode_badge

ReadPage = Callable[[int], bytes]

CC_PAGE = 3
DATA_PAGE = 4
READ_LEN = 16  # one READ returns 4 pages
CC_MAGIC = 0xE1
SCAN_LIMIT = MAX_NDEF + 64
"""How much of the data area is looked at: the NDEF TLV (4 bytes of header at most, then at most
MAX_NDEF bytes) must end within it, after at most 60 bytes of other TLVs."""

TLV_NULL, TLV_LOCK, TLV_MEMORY, TLV_NDEF, TLV_PROPRIETARY, TLV_TERMINATOR = 0x00, 0x01, 0x02, 0x03, 0xFD, 0xFE


@dataclass(frozen=True)
class Type2Cc:
    version: int
    data_size: int  # bytes of the data area from page 4
    read_access: int
    write_access: int


def parse_cc(cc: bytes) -> Type2Cc:
    """The 4 bytes of page 3. A page that is not a CC (no E1 magic: a blank or non-NDEF tag) is
    `NoBadge`; an NDEF CC this firmware cannot read is `BadCapabilityContainer`."""
    if len(cc) < 4:
        raise BadCapabilityContainer(f"CC is {len(cc)} bytes, needs 4")
    magic, version, size, access = cc[:4]
    if magic != CC_MAGIC:
        raise NoBadge("the tag is not NDEF formatted (no CC magic in page 3)")
    if version >> 4 != 1:
        raise BadCapabilityContainer(f"unsupported mapping version {version >> 4}.{version & 15}")
    if size == 0:
        raise BadCapabilityContainer("the CC declares an empty data area")
    if access >> 4 != 0:
        raise BadCapabilityContainer(f"NDEF data not readable (access {access:02x})")
    return Type2Cc(version, size * 8, access >> 4, access & 0x0F)


class _DataArea:
    """The data area read lazily, 16 bytes at a time, never past `limit` bytes."""

    def __init__(self, read_page: ReadPage, first: bytes, limit: int):
        self.read_page, self.limit = read_page, limit
        self.data = bytearray(first[:limit])
        self.reads = 0

    def need(self, end: int) -> None:
        """Make bytes [0, end) available; `end` was checked against `limit` by the caller."""
        assert end <= self.limit
        while len(self.data) < end:
            page = DATA_PAGE + len(self.data) // 4
            self.data += _checked(self.read_page(page), page)[:self.limit - len(self.data)]
            self.reads += 1

    def byte(self, pos: int) -> int:
        if pos >= self.limit:
            raise BadgeMalformed("the TLVs run past the data area")
        self.need(pos + 1)
        return self.data[pos]


def _checked(data: bytes, page: int) -> bytes:
    if len(data) != READ_LEN:
        raise BadgeMalformed(f"READ of page {page} returned {len(data)} bytes, not {READ_LEN}")
    return bytes(data)


def read_ndef(read_page: ReadPage) -> bytes:
    """The NDEF message on the tag, bounded by its CC and by MAX_NDEF."""
    try:
        head = _checked(read_page(CC_PAGE), CC_PAGE)  # pages 3..6: CC + first 12 data bytes
    except TagRefusedRead:
        raise NoBadge("the tag refused to read page 3 (not an NDEF Type 2 tag)") from None
    cc = parse_cc(head[:4])
    area = _DataArea(read_page, head[4:], min(cc.data_size, SCAN_LIMIT))
    pos = 0
    while True:
        tag = area.byte(pos)
        if tag == TLV_NULL:
            pos += 1
            continue
        if tag == TLV_TERMINATOR:
            raise NoBadge("the tag holds no NDEF message (terminator TLV first)")
        length, value_at = _tlv_length(area, pos)
        if tag == TLV_NDEF:
            return _ndef_value(area, cc, length, value_at)
        if tag not in (TLV_LOCK, TLV_MEMORY, TLV_PROPRIETARY):
            raise BadgeMalformed(f"unknown TLV {tag:02x} in the data area")
        pos = value_at + length


def _tlv_length(area: _DataArea, pos: int) -> tuple[int, int]:
    """(length, offset of the value) of the TLV at `pos`: 1-byte length, or FF + 2 bytes."""
    first = area.byte(pos + 1)
    if first != 0xFF:
        return first, pos + 2
    length = (area.byte(pos + 2) << 8) | area.byte(pos + 3)
    if length < 0xFF:
        raise BadgeMalformed(f"3-byte TLV length {length} should have been 1 byte")
    return length, pos + 4


def _ndef_value(area: _DataArea, cc: Type2Cc, length: int, value_at: int) -> bytes:
    if length == 0:
        raise NoBadge("the NDEF TLV is empty")
    if value_at + length > cc.data_size:
        raise BadgeTooLong(f"NDEF TLV of {length} bytes runs past the data area of {cc.data_size}")
    if length > MAX_NDEF:
        raise BadgeTooLong(f"NDEF TLV of {length} bytes exceeds the badge limit {MAX_NDEF}")
    if value_at + length > area.limit:
        raise BadgeMalformed("the NDEF TLV starts too far into the data area")
    area.need(value_at + length)
    return bytes(area.data[value_at:value_at + length])


def read_badge(read_page: ReadPage) -> Badge:
    """The badge on the Type 2 tag behind `read_page`; typed `CardDataError`s otherwise."""
    return decode_badge(read_ndef(read_page))


MAX_READS = 1 + -(-SCAN_LIMIT // READ_LEN)
"""The most reads `read_ndef` makes."""


def pcsc_read_page(transmit: Callable[[bytes], bytes]) -> ReadPage:
    """A `ReadPage` over a PC/SC reader's storage-card pseudo-APDU `FF B0 00 <page> 10`."""
    def read_page(page: int) -> bytes:
        if not 0 <= page <= 0xFF:
            raise BadgeMalformed(f"page {page} is beyond what READ BINARY can address")
        resp = transmit(bytes([0xFF, 0xB0, 0x00, page, READ_LEN]))
        if len(resp) < 2:
            raise CardCommunicationError(f"response of {len(resp)} bytes has no status word")
        if resp[-2:] != b"\x90\x00":
            raise TagRefusedRead(f"READ BINARY of page {page} failed with SW {resp[-2:].hex()}")
        return resp[:-2]
    return read_page
