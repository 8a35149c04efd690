"""Reading a badge from an NFC Forum Type 4 tag with bounded APDUs, whatever carries them.

`read_card(transmit)` takes a function that sends one command APDU and returns the response
(data + SW1 SW2) — pyscard's SCardTransmit or nfcpy's Type4Tag.transceive — and returns the UID
and the decoded badge. Every length is checked before it is used: at most
`1 + ceil(MAX_NDEF / chunk)` READ BINARY commands are sent whatever the card answers, so a card
that lies about its length or returns short chunks can neither hang nor flood the reader.
"""

from __future__ import annotations

import struct
from typing import Callable

from hal.card import BadgeMalformed, CardCommunicationError, NoBadge, NoUid
from hal.card.badge import (CC_FILE_ID, CC_LEN, MAX_NDEF, NDEF_AID, Badge, check_nlen,
                            decode_badge, parse_cc)

Transmit = Callable[[bytes], bytes]

GET_UID = bytes.fromhex("FFCA000000")
_OK = b"\x90\x00"
_CHUNK = 0xF0  # fits every reader's short APDU buffer; capped further by the CC's MLe


def _split(resp: bytes) -> tuple[bytes, bytes]:
    if len(resp) < 2:
        raise CardCommunicationError(f"response of {len(resp)} bytes has no status word")
    return resp[:-2], resp[-2:]


def select_aid(aid: bytes) -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00"


def select_file(file_id: int) -> bytes:
    return bytes([0x00, 0xA4, 0x00, 0x0C, 0x02]) + struct.pack(">H", file_id)


def read_binary(offset: int, length: int) -> bytes:
    return bytes([0x00, 0xB0]) + struct.pack(">H", offset) + bytes([length])


def read_uid(transmit: Transmit) -> bytes:
    data, sw = _split(transmit(GET_UID))
    if sw != _OK or not 4 <= len(data) <= 10:
        raise NoUid(f"the reader returned no UID (SW {sw.hex()}, {len(data)} bytes)")
    return data


def _read_exact(transmit: Transmit, offset: int, length: int, chunk: int) -> bytes:
    """Read `length` bytes from `offset` of the selected file in chunks; never more commands than
    the length requires (a short or empty answer is an error, not a reason to ask again)."""
    out = bytearray()
    while len(out) < length:
        want = min(chunk, length - len(out))
        data, sw = _split(transmit(read_binary(offset + len(out), want)))
        if sw != _OK:
            raise BadgeMalformed(f"READ BINARY failed with SW {sw.hex()}")
        if len(data) != want:
            raise BadgeMalformed(f"READ BINARY returned {len(data)} bytes, asked {want}")
        out += data
    return bytes(out)


def read_ndef(transmit: Transmit) -> bytes:
    """The NDEF message of the tag, bounded by its CC and by MAX_NDEF."""
    _, sw = _split(transmit(select_aid(NDEF_AID)))
    if sw != _OK:
        raise NoBadge(f"no NDEF application on the card (SW {sw.hex()})")
    _, sw = _split(transmit(select_file(CC_FILE_ID)))
    if sw != _OK:
        raise BadgeMalformed(f"no capability container file (SW {sw.hex()})")
    cc = parse_cc(_read_exact(transmit, 0, CC_LEN, CC_LEN))
    chunk = max(1, min(_CHUNK, cc.max_le))
    _, sw = _split(transmit(select_file(cc.ndef_file_id)))
    if sw != _OK:
        raise BadgeMalformed(f"no NDEF file {cc.ndef_file_id:04X} (SW {sw.hex()})")
    nlen = struct.unpack(">H", _read_exact(transmit, 0, 2, 2))[0]
    check_nlen(nlen, cc)
    assert nlen <= MAX_NDEF
    return _read_exact(transmit, 2, nlen, chunk)


def read_card(transmit: Transmit, *, with_uid: bool = True) -> tuple[bytes, Badge]:
    """(UID, badge) of the card behind `transmit`; typed `CardError`s otherwise."""
    uid = read_uid(transmit) if with_uid else b""
    return uid, decode_badge(read_ndef(transmit))
