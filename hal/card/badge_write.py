"""What a badge writer puts on a card: the NDEF message and each tag type's memory image (pure).

- Type 2 (NTAG21x / Ultralight): `type2_user_pages(message, data_size)` is what to write from page 4
  (the NDEF TLV, then a Terminator TLV, padded to whole pages), `type2_cc(data_size)` page 3.
  `type2_image(...)` is a whole tag's memory from page 0 (for the simulator).
- Type 3 (FeliCa Lite-S): `type3_blocks(message)` is the NDEF service's blocks from block 0 (the
  attribute information block with its checksum, then the message padded to whole blocks).
- Type 4: `type4_files(message)` is the CC file (E103) and the NDEF file (E104) images.

A writer writes the data first and the CC / attribute block last (WriteF 0F while writing, as the
Type 3 spec asks), then locks the tag where the format allows. `read(write(x)) == x` is tested
against `hal.card.type2`, `type3` and `type4`.
"""

from __future__ import annotations

import struct

from hal.card import BadgeTooLong
from hal.card.badge import MAX_NDEF, cc_file, encode_badge, ndef_file
from hal.card.type3 import BLOCK, WRITE_IN_PROGRESS

# Data area sizes of common Type 2 tags (bytes from page 4, as their CC declares them).
NTAG213_DATA, NTAG215_DATA, NTAG216_DATA, ULTRALIGHT_DATA = 144, 496, 872, 48


def badge_message(user: str, org: str) -> bytes:
    """The NDEF message of a badge (ids are validated: `BadgeInvalidId`)."""
    return encode_badge(user, org)


def _check_message(message: bytes) -> None:
    if not message:
        raise ValueError("an NDEF message is at least one record")
    if len(message) > MAX_NDEF:
        raise BadgeTooLong(f"a badge message is at most {MAX_NDEF} bytes, not {len(message)}")


# -- Type 2 -----------------------------------------------------------------------------------

def type2_cc(data_size: int, *, read_only: bool = False) -> bytes:
    """Page 3: magic E1, mapping 1.0, data area size / 8, access (0F = no write access)."""
    if data_size % 8 or not 8 <= data_size <= 255 * 8:
        raise ValueError(f"a Type 2 data area is a multiple of 8 up to 2040 bytes, not {data_size}")
    return bytes([0xE1, 0x10, data_size // 8, 0x0F if read_only else 0x00])


def ndef_tlv(message: bytes) -> bytes:
    """The NDEF TLV (03, 1- or 3-byte length, the message) followed by a Terminator TLV."""
    length = bytes([len(message)]) if len(message) < 0xFF else b"\xff" + struct.pack(">H", len(message))
    return b"\x03" + length + message + b"\xfe"


def type2_user_pages(message: bytes, data_size: int = NTAG213_DATA) -> bytes:
    """The bytes to write from page 4, padded to whole pages; `BadgeTooLong` if they do not fit."""
    _check_message(message)
    tlv = ndef_tlv(message)
    if len(tlv) > data_size:
        raise BadgeTooLong(f"the badge needs {len(tlv)} bytes; the tag's data area has {data_size}")
    return tlv + b"\x00" * (-len(tlv) % 4)


def type2_header(uid: bytes) -> bytes:
    """Pages 0-2 of an NXP tag with a 7-byte UID: UID0-2, BCC0, UID3-6, BCC1, internal, lock 0-1."""
    if len(uid) != 7:
        raise ValueError("a Type 2 tag has a 7-byte UID")
    bcc0 = 0x88 ^ uid[0] ^ uid[1] ^ uid[2]
    bcc1 = uid[3] ^ uid[4] ^ uid[5] ^ uid[6]
    return uid[:3] + bytes([bcc0]) + uid[3:] + bytes([bcc1, 0x48, 0x00, 0x00])


def type2_image(message: bytes | None, uid: bytes, data_size: int = NTAG213_DATA, *,
                read_only: bool = False) -> bytes:
    """A whole tag's memory from page 0 (header, CC, data area); `message=None`: a blank tag
    (CC page all zero: not NDEF formatted)."""
    header = type2_header(uid)
    if message is None:
        return header + bytes(4) + bytes(data_size)
    data = type2_user_pages(message, data_size)
    return header + type2_cc(data_size, read_only=read_only) + data + bytes(data_size - len(data))


# -- Type 3 -----------------------------------------------------------------------------------

def attribute_block(length: int, *, nmaxb: int, nbr: int = 4, nbw: int = 1, writing: bool = False,
                    read_only: bool = False) -> bytes:
    """Block 0 of the NDEF service: mapping 1.0, Nbr, Nbw, Nmaxb, WriteF, RWFlag, Ln, checksum."""
    body = struct.pack(">BBBH4xBB", 0x10, nbr, nbw, nmaxb, WRITE_IN_PROGRESS if writing else 0x00,
                       0x00 if read_only else 0x01) + length.to_bytes(3, "big")
    return body + struct.pack(">H", sum(body) & 0xFFFF)


def type3_blocks(message: bytes, *, nmaxb: int = 13, nbr: int = 4, nbw: int = 1,
                 read_only: bool = False) -> list[bytes]:
    """The NDEF service's blocks from block 0 (FeliCa Lite-S: 13 blocks of NDEF area, Nbr 4)."""
    _check_message(message)
    if len(message) > nmaxb * BLOCK:
        raise BadgeTooLong(f"the badge needs {len(message)} bytes; the tag's NDEF area has {nmaxb * BLOCK}")
    padded = message + bytes(-len(message) % BLOCK)
    data = [padded[i:i + BLOCK] for i in range(0, len(padded), BLOCK)]
    return [attribute_block(len(message), nmaxb=nmaxb, nbr=nbr, nbw=nbw, read_only=read_only)] + data


# -- Type 4 -----------------------------------------------------------------------------------

def type4_files(message: bytes, *, max_ndef_file_size: int = 2 + MAX_NDEF) -> tuple[bytes, bytes]:
    """(CC file E103, NDEF file E104) images."""
    _check_message(message)
    if len(message) > max_ndef_file_size - 2:
        raise BadgeTooLong(f"the badge needs {len(message) + 2} bytes; the NDEF file has {max_ndef_file_size}")
    return cc_file(max_ndef_file_size=max_ndef_file_size), ndef_file(message)
