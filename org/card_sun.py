"""NTAG 424 DNA "Secure Unique NFC" (SUN) messages: what the card computes on every read, and what
the org's own server checks (issue 18: a card that proves itself to its own organization).

Pure functions after NXP AN12196 ("NTAG 424 DNA and NTAG 424 DNA TagTamper features and hints"),
section 3.4, with its test vectors in tests/unit/test_card_sun.py:

- `PICCData` = PICCDataTag (0xC7: UID and read counter mirrored, a 7-byte UID) || UID (7 bytes) ||
  SDMReadCtr (3 bytes, least significant first), padded with random bytes to 16, AES-128-CBC with the org's
  `K_SDMMetaRead` and a zero IV: `ENCPICCData`, 16 bytes.
- the session MAC key: AES-CMAC under the org's `K_SDMFileRead` of SV2 = 3C C3 00 01 00 80 || UID ||
  SDMReadCtr (16 bytes);
- `SDMMAC`: AES-CMAC under that session key of the MAC input (the mirrored text between
  SDMMACInputOffset and the MAC; empty when the MAC follows the PICC data directly), truncated to its
  eight odd-indexed bytes (1, 3, ..., 15).

Both keys are the org's (written into the card by `tenantprint org card issue`): the shared MFP
only forwards the message. A message is good when its MAC verifies, it names the UID the org
registered for that user, and its counter is above every counter the org accepted from that card
before (`check`): a copied message (replay) or another card's message fails.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

PICC_DATA_TAG = 0xC7  # UID mirrored, SDMReadCtr mirrored, UID length 7
UID_LEN = 7
MAX_COUNTER = 0xFFFFFF  # 3 bytes: the card stops answering SUN reads after this many
_SV2_PREFIX = bytes.fromhex("3CC300010080")
_HEX16 = re.compile(r"^[0-9A-Fa-f]{32}$")
_HEX8 = re.compile(r"^[0-9A-Fa-f]{16}$")


class SunError(ValueError):
    """The message is not a good SUN message for this card (the reason names no key or data)."""


@dataclass(frozen=True)
class SunMessage:
    """What the card mirrors into its NDEF file on a read: `enc_picc_data` (32 hex digits) and
    `mac` (16 hex digits)."""

    enc_picc_data: str
    mac: str


@dataclass(frozen=True)
class Card:
    """One issued card as its org's server knows it: its 7-byte UID and the two AES-128 keys
    `tenantprint org card issue` wrote into it (org secrets: never shown)."""

    uid: bytes
    k_meta_read: bytes = field(repr=False)
    k_file_read: bytes = field(repr=False)

    def __post_init__(self):
        if not isinstance(self.uid, bytes) or len(self.uid) != UID_LEN:
            raise ValueError("a card's UID is 7 bytes")
        _key(self.k_meta_read)
        _key(self.k_file_read)

    @classmethod
    def new(cls, uid: bytes) -> "Card":
        """A card with fresh random keys."""
        return cls(uid, os.urandom(16), os.urandom(16))

    def to_json(self) -> dict:
        return {"uid": self.uid.hex(), "k_meta": self.k_meta_read.hex(), "k_file": self.k_file_read.hex()}

    @classmethod
    def from_json(cls, obj: dict) -> "Card":
        if not isinstance(obj, dict) or set(obj) != {"uid", "k_meta", "k_file"}:
            raise ValueError("a card is exactly uid, k_meta, k_file")
        try:
            return cls(bytes.fromhex(obj["uid"]), bytes.fromhex(obj["k_meta"]), bytes.fromhex(obj["k_file"]))
        except (TypeError, ValueError):
            raise ValueError("a card's uid and keys are hex") from None


@dataclass(frozen=True)
class SunReading:
    """A verified message's contents."""

    uid: bytes
    counter: int


def _key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != 16:
        raise ValueError("an NTAG 424 DNA key is 16 bytes (AES-128)")
    return key


def _cmac(key: bytes, data: bytes) -> bytes:
    c = CMAC(algorithms.AES128(_key(key)))
    c.update(data)
    return c.finalize()


def _aes_cbc(key: bytes, data: bytes, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES128(_key(key)), modes.CBC(bytes(16)))
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(data) + op.finalize()


def session_mac_key(k_file_read: bytes, uid: bytes, counter: int) -> bytes:
    """KSesSDMFileReadMAC for this read (AN12196 §3.4.4: CMAC of SV2)."""
    return _cmac(k_file_read, _SV2_PREFIX + uid + counter.to_bytes(3, "little"))


def sdm_mac(k_file_read: bytes, uid: bytes, counter: int, mac_input: bytes = b"") -> bytes:
    """The 8-byte SDMMAC: the session key's CMAC of `mac_input`, its odd-indexed bytes."""
    return _cmac(session_mac_key(k_file_read, uid, counter), mac_input)[1::2]


def message(uid: bytes, counter: int, k_meta_read: bytes, k_file_read: bytes, mac_input: bytes = b"") -> SunMessage:
    """What a card with these keys mirrors on its read number `counter` (the lab's virtual card)."""
    if len(uid) != UID_LEN or not 0 <= counter <= MAX_COUNTER:
        raise ValueError("a 7-byte UID and a 3-byte counter")
    # the card pads with random bytes: two reads never look alike, even to one who knows the layout
    plain = bytes([PICC_DATA_TAG]) + uid + counter.to_bytes(3, "little") + os.urandom(16 - 1 - UID_LEN - 3)
    enc = _aes_cbc(k_meta_read, plain, encrypt=True)
    return SunMessage(enc.hex().upper(), sdm_mac(k_file_read, uid, counter, mac_input).hex().upper())


def read(msg: SunMessage, k_meta_read: bytes, k_file_read: bytes, mac_input: bytes = b"") -> SunReading:
    """Decrypt and verify a message with the org's keys; SunError when it is not one of theirs."""
    if not (isinstance(msg.enc_picc_data, str) and _HEX16.match(msg.enc_picc_data)
            and isinstance(msg.mac, str) and _HEX8.match(msg.mac)):
        raise SunError("not a SUN message (PICC data: 32 hex digits, MAC: 16)")
    plain = _aes_cbc(k_meta_read, bytes.fromhex(msg.enc_picc_data), encrypt=False)
    if plain[0] != PICC_DATA_TAG:
        # a wrong key decrypts to noise: said the same way as a bad MAC
        raise SunError("the message does not verify")
    uid, counter = plain[1:1 + UID_LEN], int.from_bytes(plain[1 + UID_LEN:4 + UID_LEN], "little")
    if not hmac.compare_digest(sdm_mac(k_file_read, uid, counter, mac_input), bytes.fromhex(msg.mac)):
        raise SunError("the message does not verify")
    return SunReading(uid, counter)


def check(msg: SunMessage, k_meta_read: bytes, k_file_read: bytes, registered_uid: bytes, last_counter: int | None,
          mac_input: bytes = b"") -> SunReading:
    """A tap's proof as the org's server takes it: the message verifies under the org's keys, is
    from the card registered for the user (`registered_uid`), and its counter is above
    `last_counter` (the highest this server accepted from that card; None: never one). The caller
    stores the returned counter before it answers, so the same message is never taken twice."""
    reading = read(msg, k_meta_read, k_file_read, mac_input)
    if not hmac.compare_digest(reading.uid, registered_uid):
        raise SunError("the message is from another card")
    if last_counter is not None and reading.counter <= last_counter:
        raise SunError("the message was used before (replay)")
    return reading
