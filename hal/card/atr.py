"""What a card behind a PC/SC contactless reader is, from the ATR the reader makes up for it.

PC/SC part 3 (supplement) readers (ACR122U, ACR1252U, OMNIKEY 5x22, SCM SCL3711, ...) give a
contactless *storage* card (one without ISO 14443-4) the ATR
`3B 8F 80 01 80 4F 0C A0 00 00 03 06 SS NN NN 00 00 00 00 TCK`: RID A0 00 00 03 06 (PC/SC), SS the
standard, NN NN the card name. A card that speaks ISO 14443-4 gets an ATR built from its ATS or
ATQB instead, and is read as NFC Forum Type 4.
"""

from __future__ import annotations

from hal.card import KIND_MIFARE_CLASSIC, KIND_TYPE2, KIND_TYPE3, KIND_TYPE4, KIND_UNKNOWN

PCSC_STORAGE_AID = bytes.fromhex("4F0CA000000306")

TYPE2_NAMES = {0x0003: "MIFARE Ultralight / NTAG", 0x003A: "MIFARE Ultralight C",
               0x003D: "MIFARE Ultralight EV1"}
CLASSIC_NAMES = {0x0001: "MIFARE Classic 1K", 0x0002: "MIFARE Classic 4K", 0x0026: "MIFARE Mini",
                 0x0036: "MIFARE Plus SL1 2K", 0x0037: "MIFARE Plus SL1 4K"}
FELICA_NAMES = {0xF011: "FeliCa 212 kbps", 0xF012: "FeliCa 424 kbps"}


def storage_card(atr: bytes) -> tuple[int, int] | None:
    """(standard, card name) of a PC/SC part 3 storage-card ATR; None for any other ATR."""
    at = atr.find(PCSC_STORAGE_AID)
    if at < 0 or len(atr) < at + len(PCSC_STORAGE_AID) + 3:
        return None
    rest = atr[at + len(PCSC_STORAGE_AID):]
    return rest[0], (rest[1] << 8) | rest[2]


def card_kind(atr: bytes) -> str:
    """One of the `KIND_*` names for the card with this ATR."""
    card = storage_card(atr)
    if card is None:
        return KIND_TYPE4
    _standard, name = card
    if name in TYPE2_NAMES:
        return KIND_TYPE2
    if name in CLASSIC_NAMES:
        return KIND_MIFARE_CLASSIC
    if name in FELICA_NAMES:
        return KIND_TYPE3
    return KIND_UNKNOWN


def storage_atr(name: int, standard: int = 0x03) -> bytes:
    """The ATR a PC/SC part 3 reader gives a storage card (for virtual cards and tests)."""
    body = bytes.fromhex("3B8F8001") + b"\x80" + PCSC_STORAGE_AID + bytes([standard, name >> 8, name & 0xFF]) \
        + bytes(4)
    tck = 0
    for b in body[1:]:
        tck ^= b
    return body + bytes([tck])
