"""Writing a badge onto a card, per tag type, whatever carries the commands; then reading it back.

Each `write_typeN` takes the tag's primitives (an object with the methods below), checks the card
before writing anything (formatted, writable, big enough, lockable when `lock` is asked), writes the
badge so that a torn write leaves an empty or the old tag rather than a wrong one, reads it back with
the same strict readers the firmware uses (`hal.card.type2` / `type3` / `type4`), and only then
locks it when asked. `dry_run` stops after the checks.

- Type 2 (NTAG21x, Ultralight): `read(page) -> 16 bytes`, `write(page, 4 bytes)`, `data_size_hint()`
  (the data area of an unformatted tag, from its product; None if unknown). The NDEF TLV is first
  written empty (03 00 FE), then the message, then its length; the CC last on a blank tag. Lock: CC
  write access 0F, static lock bytes (page 2) and the dynamic lock bytes of the NTAG21x (page by
  data area size); a tag whose dynamic lock page is unknown is refused.
- Type 3 (FeliCa Lite / Lite-S): `read(blocks) -> bytes`, `write(blocks, data)`, `lockable` (the
  IC has an MC block, 0x88). Attribute block with WriteF 0F, data, attribute block with the new Ln.
  Lock: RWFlag 00 and the MC block (S_PAD0-13 read-only, MC_ALL 00). A Type 3 tag without an MC
  block (the RWFlag alone is advisory) is refused.
- Type 4: `transmit(apdu) -> response`. UPDATE BINARY of NLEN 0000, the message, NLEN. Lock: only
  on a card that accepts UPDATE BINARY of its CC's write-access byte (probed, before writing, by
  rewriting the current value); most Type 4 cards (NTAG 424 DNA, DESFire) need the maker's own
  commands and are refused.

Adapters for nfcpy tag objects (`Nfcpy2`, `Nfcpy3`, `nfcpy_transmit`) and PC/SC storage-card
pseudo-APDUs (`Pcsc2`: `FF B0` READ BINARY, `FF D6` UPDATE BINARY) are at the end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from hal.card import BadgeTooLong, CardCommunicationError, CardError, TagRefusedRead, mask_uid
from hal.card import type2, type3, type4
from hal.card.badge import CC_FILE_ID, CC_LEN, NDEF_AID, decode_badge, parse_cc as parse_type4_cc
from hal.card.badge_write import attribute_block, type2_cc, type2_user_pages

# -- errors -----------------------------------------------------------------------------------


class WriteRefused(CardError):
    """The card was not written: it cannot take this badge as asked. Nothing was changed."""


class NotFormatted(WriteRefused):
    """The card has no NDEF structure this writer can use (and cannot be formatted here)."""


class CardLocked(WriteRefused):
    """The card (or its NDEF data) is already read-only."""


class CannotLock(WriteRefused):
    """`lock` was asked and this card cannot be made read-only by this writer."""


class WriteFailed(CardError):
    """A write was refused midway or the read-back differs: the card may hold a partial badge."""


class TagRefusedWrite(WriteFailed):
    """The tag answered a write with an error (a NAK, a FeliCa status flag, an SW other than 9000).
    Raised by the adapters' `write`."""


@dataclass(frozen=True)
class WriteResult:
    kind: str
    uid: bytes
    bytes_written: int  # the NDEF message's length
    capacity: int       # the tag's NDEF area
    locked: bool
    dry_run: bool = False

    def as_json(self) -> dict:
        return {"type": self.kind, "uid": mask_uid(self.uid), "bytes": self.bytes_written,
                "capacity": self.capacity, "locked": self.locked, "dry_run": self.dry_run}


def _verify(message: bytes, read_back: bytes) -> None:
    if read_back != message:
        raise WriteFailed("the badge read back differs from what was written")
    decode_badge(read_back)


# -- Type 2 -----------------------------------------------------------------------------------

# NTAG21x dynamic lock bytes (page = the configuration page - 1), by the data area its CC declares.
# 48 bytes (Ultralight, NTAG210): the static lock bytes cover every user page.
DYNAMIC_LOCK_PAGE = {48: None, 128: 36, 144: 40, 496: 130, 872: 226}
PRODUCT_DATA_SIZE = {"NXP NTAG210": 48, "NXP NTAG212": 128, "NXP NTAG213": 144, "NXP NTAG215": 496,
                     "NXP NTAG216": 872, "Mifare Ultralight (MF01CU1)": 48}
EMPTY_NDEF_PAGE = b"\x03\x00\xfe\x00"


def write_type2(tag, uid: bytes, message: bytes, *, lock: bool = False, dry_run: bool = False) -> WriteResult:
    head = tag.read(0)  # pages 0-3: UID, static lock bytes (page 2, bytes 2-3), CC
    cc_page = head[12:16]
    if cc_page[0] == type2.CC_MAGIC:
        cc = type2.parse_cc(cc_page)
        if cc.write_access != 0:
            raise CardLocked(f"the tag's CC says its NDEF data is read-only (access {cc_page[3]:02x})")
        data_size, new_cc = cc.data_size, None
    elif cc_page == bytes(4):
        data_size = tag.data_size_hint()
        if data_size is None:
            raise NotFormatted("the tag is not NDEF formatted and its size is unknown")
        new_cc = type2_cc(data_size)
    else:
        raise NotFormatted(f"page 3 is not an NDEF CC ({cc_page.hex()}) and is one-time programmable")
    if head[10:12] != b"\x00\x00":
        raise CardLocked("the tag has locked pages (static lock bytes set)")
    pages = type2_user_pages(message, data_size)
    dynamic = DYNAMIC_LOCK_PAGE.get(data_size, -1)
    if lock and dynamic == -1:
        raise CannotLock(f"no known lock bytes for a Type 2 tag with a {data_size}-byte data area")
    if dry_run:
        return WriteResult("type2", uid, len(message), data_size, False, dry_run=True)

    write = tag.write
    write(type2.DATA_PAGE, EMPTY_NDEF_PAGE)
    for i in range(4, len(pages), 4):
        write(type2.DATA_PAGE + i // 4, pages[i:i + 4])
    write(type2.DATA_PAGE, pages[:4])
    if new_cc is not None:
        write(type2.CC_PAGE, new_cc)
    _verify(message, type2.read_ndef(tag.read))
    if lock:
        write(type2.CC_PAGE, type2_cc(data_size, read_only=True))
        write(2, b"\x00\x00\xff\xff")
        if dynamic is not None:
            write(dynamic, b"\xff\xff\xff\x00")
        head = tag.read(0)
        if head[15] != 0x0F or head[10:12] != b"\xff\xff":
            raise WriteFailed("the tag did not keep its lock bits")
    return WriteResult("type2", uid, len(message), data_size, lock)


# -- Type 3 -----------------------------------------------------------------------------------

MC_BLOCK = 0x88


def write_type3(tag, uid: bytes, message: bytes, *, lock: bool = False, dry_run: bool = False) -> WriteResult:
    try:
        info = type3.parse_attribute_block(tag.read([0]))
    except TagRefusedRead:
        raise NotFormatted("the tag has no readable NDEF service (system 12FC, service 000B)") from None
    if not info.writable:
        raise CardLocked("the tag's attribute block says its NDEF data is read-only (RWFlag 00)")
    capacity = info.nmaxb * type3.BLOCK
    if len(message) > capacity:
        raise BadgeTooLong(f"the badge needs {len(message)} bytes; the tag's NDEF area has {capacity}")
    if tag.lockable:
        mc = tag.read([MC_BLOCK])
        if mc[2] != 0xFF or struct.unpack("<H", mc[0:2])[0] & 0x3FFF != 0x3FFF:
            raise CardLocked("the tag's memory configuration (MC) makes blocks read-only")
    elif lock:
        raise CannotLock("this Type 3 tag has no memory configuration block: its RWFlag alone is advisory")
    if dry_run:
        return WriteResult("type3", uid, len(message), capacity, False, dry_run=True)

    def attribute(length: int, *, writing: bool = False, read_only: bool = False) -> bytes:
        return attribute_block(length, nmaxb=info.nmaxb, nbr=info.nbr, nbw=info.nbw, writing=writing,
                               read_only=read_only)

    write = tag.write
    write([0], attribute(info.length, writing=True))
    padded = message + bytes(-len(message) % type3.BLOCK)
    per_write = max(1, min(info.nbw, 4))
    count = len(padded) // type3.BLOCK
    for first in range(1, count + 1, per_write):
        blocks = list(range(first, min(first + per_write, count + 1)))
        write(blocks, padded[(first - 1) * type3.BLOCK:blocks[-1] * type3.BLOCK])
    write([0], attribute(len(message)))
    _verify(message, type3.read_ndef(tag.read))
    if lock:
        write([0], attribute(len(message), read_only=True))
        mc = bytearray(tag.read([MC_BLOCK]))
        mc[0:2] = struct.pack("<H", struct.unpack("<H", mc[0:2])[0] & ~0x3FFF & 0xFFFF)
        mc[2] = 0x00
        write([MC_BLOCK], bytes(mc))
        if type3.parse_attribute_block(tag.read([0])).writable or tag.read([MC_BLOCK])[2] != 0x00:
            raise WriteFailed("the tag did not keep its read-only settings")
    return WriteResult("type3", uid, len(message), capacity, lock)


# -- Type 4 -----------------------------------------------------------------------------------

_OK = b"\x90\x00"
CC_WRITE_ACCESS_OFFSET = 14
_CHUNK = 0xF0


def update_binary(offset: int, data: bytes) -> bytes:
    return bytes([0x00, 0xD6]) + struct.pack(">H", offset) + bytes([len(data)]) + data


def _sw(resp: bytes) -> bytes:
    if len(resp) < 2:
        raise CardCommunicationError(f"response of {len(resp)} bytes has no status word")
    return resp[-2:]


def _select_cc(transmit) -> bytes:
    if _sw(transmit(type4.select_aid(NDEF_AID))) != _OK:
        raise NotFormatted("the card has no NDEF application")
    if _sw(transmit(type4.select_file(CC_FILE_ID))) != _OK:
        raise NotFormatted("the card's NDEF application has no CC file")
    resp = transmit(type4.read_binary(0, CC_LEN))
    if _sw(resp) != _OK or len(resp) != CC_LEN + 2:
        raise NotFormatted(f"the CC file could not be read (SW {_sw(resp).hex()})")
    return resp[:-2]


def write_type4(transmit, uid: bytes, message: bytes, *, lock: bool = False, dry_run: bool = False) -> WriteResult:
    raw_cc = _select_cc(transmit)
    cc = parse_type4_cc(raw_cc)
    if raw_cc[CC_WRITE_ACCESS_OFFSET] != 0x00:
        raise CardLocked(f"the NDEF file is not writable (CC write access {raw_cc[CC_WRITE_ACCESS_OFFSET]:02x})")
    capacity = cc.max_ndef_file_size - 2
    if len(message) > capacity:
        raise BadgeTooLong(f"the badge needs {len(message)} bytes; the NDEF file holds {capacity}")
    if lock and _sw(transmit(update_binary(CC_WRITE_ACCESS_OFFSET, b"\x00"))) != _OK:
        raise CannotLock("this Type 4 card does not let the NDEF file's write access be changed (its CC "
                         "is read-only; cards such as NTAG 424 DNA or DESFire need the maker's commands): "
                         "write it without --lock, or use a Type 2 or Type 3 card")
    if dry_run:
        return WriteResult("type4", uid, len(message), capacity, False, dry_run=True)

    def update(offset: int, data: bytes) -> None:
        sw = _sw(transmit(update_binary(offset, data)))
        if sw != _OK:
            raise WriteFailed(f"UPDATE BINARY at {offset} failed with SW {sw.hex()}")

    if _sw(transmit(type4.select_file(cc.ndef_file_id))) != _OK:
        raise NotFormatted(f"the card has no NDEF file {cc.ndef_file_id:04X}")
    update(0, b"\x00\x00")
    chunk = max(1, min(_CHUNK, cc.max_lc))
    for at in range(0, len(message), chunk):
        update(2 + at, message[at:at + chunk])
    update(0, struct.pack(">H", len(message)))
    _verify(message, type4.read_ndef(transmit))
    if lock:
        _select_cc(transmit)
        update(CC_WRITE_ACCESS_OFFSET, b"\xff")
        if _select_cc(transmit)[CC_WRITE_ACCESS_OFFSET] != 0xFF:
            raise WriteFailed("the card did not keep the NDEF file's read-only access")
    return WriteResult("type4", uid, len(message), capacity, lock)


# -- adapters: nfcpy tag objects ---------------------------------------------------------------

def _nfcpy_call(what: str, refused: type[CardError], is_refusal: Callable[[int], bool], fn, *args):
    """`fn(*args)` with nfcpy's errors as ours: a tag's refusal (`is_refusal(errno)`) is `refused`."""
    import nfc.clf
    import nfc.tag
    try:
        return fn(*args)
    except nfc.tag.TagCommandError as exc:
        if is_refusal(int(exc)):
            raise refused(f"the tag refused to {what} (error {int(exc):04x})") from None
        raise CardCommunicationError(f"{what} failed: {exc}") from None
    except nfc.clf.CommunicationError as exc:
        raise CardCommunicationError(f"{what} failed: {exc}") from None


def _tt2_nak(errno: int) -> bool:
    from nfc.tag.tt2 import INVALID_PAGE_ERROR
    return errno == INVALID_PAGE_ERROR


def _tt3_status(errno: int) -> bool:
    return errno > 0xFF  # the tag's status flags


class Nfcpy2:
    """Type 2 primitives over an nfcpy `Type2Tag` (READ 30, WRITE A2)."""

    def __init__(self, tag):
        self.tag = tag

    def read(self, page: int) -> bytes:
        return bytes(_nfcpy_call(f"read page {page}", TagRefusedRead, _tt2_nak, self.tag.read, page))

    def write(self, page: int, data: bytes) -> None:
        _nfcpy_call(f"write page {page}", TagRefusedWrite, _tt2_nak, self.tag.write, page, bytearray(data))

    def data_size_hint(self) -> int | None:
        return PRODUCT_DATA_SIZE.get(getattr(self.tag, "product", ""))


class Nfcpy3:
    """Type 3 primitives over an nfcpy `Type3Tag`: the NDEF service (read 000B, write 0009)."""

    def __init__(self, tag):
        self.tag = tag
        pmm = bytes(getattr(tag, "pmm", b"") or b"")
        self.lockable = len(pmm) > 1 and pmm[1] in (0xF0, 0xF1)  # FeliCa Lite, Lite-S: an MC block

    def read(self, blocks) -> bytes:
        from nfc.tag.tt3 import BlockCode, ServiceCode
        service = ServiceCode(type3.NDEF_READ_SERVICE >> 6, type3.NDEF_READ_SERVICE & 0x3F)
        return bytes(_nfcpy_call(f"read blocks {list(blocks)}", TagRefusedRead, _tt3_status,
                                 self.tag.read_without_encryption, [service], [BlockCode(n) for n in blocks]))

    def write(self, blocks, data: bytes) -> None:
        from nfc.tag.tt3 import BlockCode, ServiceCode
        _nfcpy_call(f"write blocks {list(blocks)}", TagRefusedWrite, _tt3_status, self.tag.write_without_encryption,
                    [ServiceCode(0, 0x09)], [BlockCode(n) for n in blocks], bytearray(data))


def nfcpy_transmit(tag) -> Callable[[bytes], bytes]:
    """ISO-DEP APDUs over an nfcpy `Type4Tag`."""
    import nfc.clf
    import nfc.tag

    def transmit(apdu: bytes) -> bytes:
        try:
            resp = tag.transceive(apdu)
        except (nfc.tag.TagCommandError, nfc.clf.CommunicationError) as exc:
            raise CardCommunicationError(f"tag exchange failed: {exc}") from None
        if resp is None:
            raise CardCommunicationError("tag did not answer")
        return bytes(resp)
    return transmit


# -- adapters: PC/SC storage cards -------------------------------------------------------------

class Pcsc2:
    """Type 2 primitives over a PC/SC reader's storage-card pseudo-APDUs (PC/SC part 3):
    `FF B0 00 pp 10` READ BINARY (4 pages) and `FF D6 00 pp 04 <data>` UPDATE BINARY (1 page)."""

    def __init__(self, transmit: Callable[[bytes], bytes]):
        self.transmit = transmit
        self.read = type2.pcsc_read_page(transmit)

    def write(self, page: int, data: bytes) -> None:
        if not 0 <= page <= 0xFF or len(data) != 4:
            raise ValueError("UPDATE BINARY writes one 4-byte page up to page 255")
        resp = self.transmit(bytes([0xFF, 0xD6, 0x00, page, 0x04]) + data)
        if _sw(resp) != _OK:
            raise TagRefusedWrite(f"UPDATE BINARY of page {page} failed with SW {_sw(resp).hex()}")

    def data_size_hint(self) -> int | None:
        return None  # no GET_VERSION through a PC/SC storage-card interface
