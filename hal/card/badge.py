"""The on-card badge format, decoded strictly.

A badge is an NDEF message of exactly one MIME record of type `application/vnd.tenantprint.badge+json`
whose payload is the UTF-8 JSON object `{"v":1,"u":"<user>","o":"<org>"}` (exactly these keys, no
duplicates, nothing after the object). Ids match `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.

Version 2 adds the card's proof, `{"v":2,"u":..,"o":..,"e":"<32 hex>","c":"<16 hex>"}`: an NTAG 424
DNA mirrors a fresh "Secure Unique NFC" message into `e` (its UID and read counter, encrypted) and `c`
(its MAC) on every read (org/card_sun.py). The MFP cannot check it (the keys are the org's): it
forwards it unchanged as `Badge.proof` (`e` then `c`, 48 uppercase hex digits) to the org's server.

On an NFC Forum Type 4 tag the message sits in the NDEF file (E104 by default) behind a 2-byte
length (NLEN); the capability container (CC, file E103) says where and how big. `parse_cc` and
`check_nlen` bound the read before anything is read; `cc_file` / `ndef_file` build the file images
(the lab's virtual card uses them). Every failure is a typed `CardDataError`.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

from hal.card import (BadCapabilityContainer, BadgeBadFields, BadgeInvalidId, BadgeMalformed,
                      BadgeTooLong, BadgeUnsupportedVersion, BadgeWrongType, CardDataError, NoBadge)

MIME_TYPE = b"application/vnd.tenantprint.badge+json"
VERSION = 1
VERSION_SUN = 2
MAX_NDEF = 512
"""The longest NDEF message a badge may be (a valid one is < 200 bytes)."""
NDEF_AID = bytes.fromhex("D2760000850101")
CC_FILE_ID = 0xE103
NDEF_FILE_ID = 0xE104
CC_LEN = 15

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_HEX32 = re.compile(r"[0-9A-Fa-f]{32}", re.ASCII)
_HEX16 = re.compile(r"[0-9A-Fa-f]{16}", re.ASCII)
_TNF_MIME = 0x02
_RESERVED_FILE_IDS = {0x0000, 0xE102, 0xE103, 0x3F00, 0x3FFF, 0xFFFF}


@dataclass(frozen=True)
class Badge:
    user_id: str
    org_id: str
    # a version 2 badge's SUN message, `e` then `c` (48 uppercase hex digits); "" for version 1.
    # Not a secret (it is good for one tap only), but not logged either.
    proof: str = field(default="", repr=False)


@dataclass(frozen=True)
class CapabilityContainer:
    """The fields of a Type 4 CC file that bound the NDEF read."""
    mapping_version: int
    max_le: int
    max_lc: int
    ndef_file_id: int
    max_ndef_file_size: int  # includes the 2-byte NLEN

    @property
    def max_message(self) -> int:
        """The longest NDEF message this tag may hold and we will read."""
        return min(self.max_ndef_file_size - 2, MAX_NDEF)


def valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


# -- encode -----------------------------------------------------------------------------------

def badge_payload(user: str, org: str, sun: tuple[str, str] | None = None) -> bytes:
    """The JSON payload; with `sun` = (e, c), a version 2 badge carrying that SUN message."""
    for what, value in (("user", user), ("org", org)):
        if not valid_id(value):
            raise BadgeInvalidId(f"{what} id is not a valid id")
    if sun is None:
        return json.dumps({"v": VERSION, "u": user, "o": org}, separators=(",", ":")).encode()
    e, c = sun
    if not (isinstance(e, str) and _HEX32.fullmatch(e) and isinstance(c, str) and _HEX16.fullmatch(c)):
        raise BadgeBadFields("a SUN message is 32 + 16 hex digits")
    return json.dumps({"v": VERSION_SUN, "u": user, "o": org, "e": e.upper(), "c": c.upper()},
                      separators=(",", ":")).encode()


def mime_record(mime_type: bytes, payload: bytes, *, mb: bool = True, me: bool = True) -> bytes:
    """One NDEF MIME record (short form when the payload fits in 255 bytes)."""
    short = len(payload) < 256
    header = (0x80 if mb else 0) | (0x40 if me else 0) | (0x10 if short else 0) | _TNF_MIME
    length = bytes([len(payload)]) if short else struct.pack(">I", len(payload))
    return bytes([header, len(mime_type)]) + length + mime_type + payload


def encode_badge(user: str, org: str, sun: tuple[str, str] | None = None) -> bytes:
    """The NDEF message of a badge for `user` of `org` (version 2 with `sun` = (e, c))."""
    return mime_record(MIME_TYPE, badge_payload(user, org, sun))


def cc_file(*, max_ndef_file_size: int = 2 + MAX_NDEF, max_le: int = 0x00FF, max_lc: int = 0x00FF,
            version: int = 0x20, file_id: int = NDEF_FILE_ID, read_access: int = 0x00,
            write_access: int = 0xFF) -> bytes:
    """The CC file image (E103) of a Type 4 tag."""
    return struct.pack(">HBHHBBHHBB", CC_LEN, version, max_le, max_lc, 0x04, 0x06, file_id,
                       max_ndef_file_size, read_access, write_access)


def ndef_file(message: bytes) -> bytes:
    """The NDEF file image (E104): NLEN then the message."""
    return struct.pack(">H", len(message)) + message


# -- decode -----------------------------------------------------------------------------------

def parse_cc(data: bytes) -> CapabilityContainer:
    """Validate the first 15 bytes of a CC file."""
    if len(data) < CC_LEN:
        raise BadCapabilityContainer(f"CC file is {len(data)} bytes, needs {CC_LEN}")
    (cclen, version, max_le, max_lc, tag, length, file_id, max_size, read_acc,
     _write_acc) = struct.unpack(">HBHHBBHHBB", data[:CC_LEN])
    if cclen < CC_LEN:
        raise BadCapabilityContainer(f"CCLEN {cclen} < {CC_LEN}")
    if version >> 4 not in (1, 2):
        raise BadCapabilityContainer(f"unsupported mapping version {version >> 4}.{version & 15}")
    if max_le < 0x0F or max_lc < 0x01:
        raise BadCapabilityContainer(f"MLe {max_le} / MLc {max_lc} below the minimum")
    if tag != 0x04 or length != 0x06:
        raise BadCapabilityContainer(f"expected NDEF file control TLV 04 06, got {tag:02x} {length:02x}")
    if file_id in _RESERVED_FILE_IDS:
        raise BadCapabilityContainer(f"NDEF file id {file_id:04X} is reserved")
    if not 0x0005 <= max_size <= 0xFFFE:
        raise BadCapabilityContainer(f"max NDEF file size {max_size} out of range")
    if read_acc != 0x00:
        raise BadCapabilityContainer(f"NDEF file not readable (read access {read_acc:02x})")
    return CapabilityContainer(version, max_le, max_lc, file_id, max_size)


def check_nlen(nlen: int, cc: CapabilityContainer) -> None:
    """Bound the message length before reading it."""
    if nlen == 0:
        raise NoBadge("the NDEF file is empty")
    if nlen > cc.max_ndef_file_size - 2:
        raise BadgeTooLong(f"NLEN {nlen} exceeds the tag's max NDEF size {cc.max_ndef_file_size - 2}")
    if nlen > MAX_NDEF:
        raise BadgeTooLong(f"NLEN {nlen} exceeds the badge limit {MAX_NDEF}")


def _parse_record(ndef: bytes) -> tuple[int, bytes, bytes, int]:
    """(tnf, type, payload, end offset) of the first record; checks lengths and flags."""
    if len(ndef) < 3:
        raise BadgeMalformed("NDEF message shorter than a record header")
    header = ndef[0]
    mb, me, cf, sr, il, tnf = (header >> 7) & 1, (header >> 6) & 1, (header >> 5) & 1, \
        (header >> 4) & 1, (header >> 3) & 1, header & 7
    if not mb:
        raise BadgeMalformed("first record lacks the MB flag")
    if not me:
        raise BadgeMalformed("the badge must be the only record (ME flag missing)")
    if cf:
        raise BadgeMalformed("chunked records are not accepted")
    if il:
        raise BadgeMalformed("record ids are not accepted")
    type_len = ndef[1]
    pos = 2
    if sr:
        payload_len = ndef[pos]
        pos += 1
    else:
        if len(ndef) < pos + 4:
            raise BadgeMalformed("truncated payload length")
        payload_len = struct.unpack(">I", ndef[pos:pos + 4])[0]
        pos += 4
    end = pos + type_len + payload_len
    if end > len(ndef):
        raise BadgeMalformed("record longer than the NDEF message")
    rtype = ndef[pos:pos + type_len]
    payload = ndef[pos + type_len:end]
    return tnf, rtype, payload, end


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise BadgeBadFields("duplicate key in badge JSON")
    return dict(pairs)


def _reject_constant(name: str):
    raise BadgeMalformed(f"non-standard JSON constant {name}")


def decode_payload(payload: bytes) -> Badge:
    try:
        text = payload.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadgeMalformed("badge payload is not valid UTF-8") from None
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except CardDataError:
        raise
    except (ValueError, RecursionError):
        raise BadgeMalformed("badge payload is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadgeMalformed("badge JSON is not an object")
    v = obj.get("v")
    if type(v) is not int or v not in (VERSION, VERSION_SUN):
        raise BadgeUnsupportedVersion(f"badge version {v!r} is not supported" if type(v) in (int, str)
                                      and len(str(v)) < 16 else "badge version is not supported")
    keys = {"v", "u", "o"} if v == VERSION else {"v", "u", "o", "e", "c"}
    if set(obj) != keys:
        raise BadgeBadFields(f"badge keys must be exactly {', '.join(sorted(keys))} (got {len(obj)} keys)")
    proof = ""
    if v == VERSION_SUN:
        e, c = obj["e"], obj["c"]
        if not (isinstance(e, str) and _HEX32.fullmatch(e) and isinstance(c, str) and _HEX16.fullmatch(c)):
            raise BadgeBadFields("the badge's SUN message is not 32 + 16 hex digits")
        proof = (e + c).upper()
    if not valid_id(obj["u"]):
        raise BadgeInvalidId("user id is not a valid id")
    if not valid_id(obj["o"]):
        raise BadgeInvalidId("org id is not a valid id")
    return Badge(user_id=obj["u"], org_id=obj["o"], proof=proof)


def decode_badge(ndef: bytes) -> Badge:
    """The badge in an NDEF message, or a `CardDataError` saying why not."""
    if len(ndef) == 0:
        raise NoBadge("the NDEF message is empty")
    if len(ndef) > MAX_NDEF:
        raise BadgeTooLong(f"NDEF message of {len(ndef)} bytes exceeds {MAX_NDEF}")
    tnf, rtype, payload, end = _parse_record(ndef)
    if end != len(ndef):
        raise BadgeMalformed(f"{len(ndef) - end} bytes after the badge record")
    if tnf != _TNF_MIME or rtype != MIME_TYPE:
        raise BadgeWrongType("the NDEF record is not a tenantprint badge")
    return decode_payload(payload)
