"""An NTAG (NFC Forum Type 2) behind a PC/SC reader, for vpcd: the PC/SC path of Type 2 badges.

A PC/SC part 3 reader shows a storage card with a made-up ATR (`hal.card.atr.storage_atr`, card name
00 03 = Ultralight/NTAG) and reads it with pseudo-APDUs: `FF CA 00 00 00` the UID, `FF B0 00 <page>
10` 16 bytes from a page (4 pages, wrapping like an NTAG). `Type2StorageApplet` answers exactly
those; the lab's virtual card (`lab.vcard`, `{"cmd": "insert", ..., "type2": true}`) presents one
in vpcd's slot.
"""

from __future__ import annotations

from hal.card.atr import storage_atr

ATR = storage_atr(0x0003)
SW_OK, SW_NOT_FOUND, SW_INS = b"\x90\x00", b"\x6A\x82", b"\x6D\x00"


class Type2StorageApplet:
    """Answers a PC/SC reader's storage-card pseudo-APDUs for a Type 2 memory image."""

    def __init__(self, uid: bytes, memory: bytes):
        self.uid, self.memory = uid, memory

    def reset(self) -> None:
        pass

    def process(self, apdu: bytes) -> bytes:
        if apdu[:4] == b"\xff\xca\x00\x00":
            return self.uid + SW_OK
        if apdu[:3] == b"\xff\xb0\x00" and len(apdu) == 5:
            start = apdu[3] * 4
            if start >= len(self.memory):
                return SW_NOT_FOUND
            length = apdu[4] or 256
            return (self.memory + self.memory)[start:start + length] + SW_OK
        return SW_INS
