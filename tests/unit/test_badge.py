"""The on-card badge format: round trip, every malformed case with its typed error, and a fuzz."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hal.card import (BadCapabilityContainer, BadgeBadFields, BadgeInvalidId, BadgeMalformed,
                      BadgeTooLong, BadgeUnsupportedVersion, BadgeWrongType, CardDataError,
                      CardTap, NoBadge, mask_uid)
from hal.card.badge import (MAX_NDEF, MIME_TYPE, Badge, cc_file, check_nlen, decode_badge,
                            encode_badge, mime_record, ndef_file, parse_cc)


def rec(payload: bytes | str, mime: bytes = MIME_TYPE, **kw) -> bytes:
    return mime_record(mime, payload.encode() if isinstance(payload, str) else payload, **kw)


def test_round_trip():
    assert decode_badge(encode_badge("alice", "acme")) == Badge("alice", "acme")
    longest = "a" + "B.-_9" * 12 + "xyz"
    assert len(longest) == 64
    assert decode_badge(encode_badge(longest, "o")) == Badge(longest, "o")


def test_encoding_is_the_documented_format():
    msg = encode_badge("alice", "acme")
    assert msg[0] == 0xD2  # MB ME SR, TNF=MIME
    assert msg[1] == len(MIME_TYPE)
    assert msg[3:3 + len(MIME_TYPE)] == MIME_TYPE
    assert msg[3 + len(MIME_TYPE):] == b'{"v":1,"u":"alice","o":"acme"}'


def test_long_form_record_is_accepted():
    payload = b'{"v":1,"u":"alice","o":"acme"}'
    long_form = bytes([0xC2, len(MIME_TYPE)]) + struct.pack(">I", len(payload)) + MIME_TYPE + payload
    assert decode_badge(long_form) == Badge("alice", "acme")


def test_whitespace_inside_json_is_fine():
    assert decode_badge(rec('{ "v": 1, "u": "alice", "o": "acme" }')) == Badge("alice", "acme")


@pytest.mark.parametrize("user,org", [("", "acme"), ("alice", "a b"), (".x", "acme"), ("a" * 65, "acme")])
def test_encode_refuses_bad_ids(user, org):
    with pytest.raises(BadgeInvalidId):
        encode_badge(user, org)


GOOD = '{"v":1,"u":"alice","o":"acme"}'
MALFORMED = [
    ("empty message", b"", NoBadge),
    ("longer than 512", rec("x" * 600), BadgeTooLong),
    ("shorter than a header", b"\xd2\x01", BadgeMalformed),
    ("MB flag missing", bytes([0x52]) + rec(GOOD)[1:], BadgeMalformed),
    ("second record", rec(GOOD, me=False) + rec(GOOD, mb=False), BadgeMalformed),
    ("chunked record", bytes([0xF2]) + rec(GOOD)[1:], BadgeMalformed),
    ("record id present", bytes([0xDA]) + rec(GOOD)[1:2] + rec(GOOD)[2:3] + b"\x01" + rec(GOOD)[3:], BadgeMalformed),
    ("payload length beyond message", rec(GOOD)[:-5], BadgeMalformed),
    ("truncated long length", bytes([0xC2, 0x01, 0x00]), BadgeMalformed),
    ("trailing bytes", rec(GOOD) + b"\x00", BadgeMalformed),
    ("well-known TNF", bytes([0xD1]) + rec(GOOD)[1:], BadgeWrongType),
    ("text/plain", rec(GOOD, mime=b"text/plain"), BadgeWrongType),
    ("MIME type in other case", rec(GOOD, mime=MIME_TYPE.upper()), BadgeWrongType),
    ("other vendor", rec(GOOD, mime=b"application/vnd.other.badge+json"), BadgeWrongType),
    ("invalid UTF-8", rec(b'{"v":1,"u":"al\xffce","o":"acme"}'), BadgeMalformed),
    ("UTF-8 BOM", rec(b"\xef\xbb\xbf" + GOOD.encode()), BadgeMalformed),
    ("not JSON", rec("v=1;u=alice;o=acme"), BadgeMalformed),
    ("JSON array", rec('[1,"alice","acme"]'), BadgeMalformed),
    ("JSON string", rec('"alice"'), BadgeMalformed),
    ("bytes after the JSON", rec(GOOD + "x"), BadgeMalformed),
    ("two JSON objects", rec(GOOD + GOOD), BadgeMalformed),
    ("NaN constant", rec('{"v":NaN,"u":"alice","o":"acme"}'), BadgeMalformed),
    ("duplicate key", rec('{"v":1,"u":"alice","u":"mallory","o":"acme"}'), BadgeBadFields),
    ("extra key", rec('{"v":1,"u":"alice","o":"acme","admin":true}'), BadgeBadFields),
    ("missing key", rec('{"v":1,"u":"alice"}'), BadgeBadFields),
    ("version 3", rec('{"v":3,"u":"alice","o":"acme"}'), BadgeUnsupportedVersion),
    ("version 2 without its proof", rec('{"v":2,"u":"alice","o":"acme"}'), BadgeBadFields),
    ("version 2, proof not hex", rec('{"v":2,"u":"alice","o":"acme","e":"' + "G" * 32 + '","c":"' + "0" * 16 + '"}'),
     BadgeBadFields),
    ("version 2, short MAC", rec('{"v":2,"u":"alice","o":"acme","e":"' + "0" * 32 + '","c":"' + "0" * 15 + '"}'),
     BadgeBadFields),
    ("version as string", rec('{"v":"1","u":"alice","o":"acme"}'), BadgeUnsupportedVersion),
    ("version as bool", rec('{"v":true,"u":"alice","o":"acme"}'), BadgeUnsupportedVersion),
    ("version as float", rec('{"v":1.0,"u":"alice","o":"acme"}'), BadgeUnsupportedVersion),
    ("empty user", rec('{"v":1,"u":"","o":"acme"}'), BadgeInvalidId),
    ("space in user", rec('{"v":1,"u":"al ice","o":"acme"}'), BadgeInvalidId),
    ("user starts with dot", rec('{"v":1,"u":".alice","o":"acme"}'), BadgeInvalidId),
    ("user of 65 chars", rec(json.dumps({"v": 1, "u": "a" * 65, "o": "acme"})), BadgeInvalidId),
    ("newline after user", rec('{"v":1,"u":"alice\\n","o":"acme"}'), BadgeInvalidId),
    ("non-ASCII org", rec('{"v":1,"u":"alice","o":"\\uff41cme"}'), BadgeInvalidId),
    ("user is a number", rec('{"v":1,"u":42,"o":"acme"}'), BadgeInvalidId),
    ("org is null", rec('{"v":1,"u":"alice","o":null}'), BadgeInvalidId),
    ("org with slash", rec('{"v":1,"u":"alice","o":"acme/../x"}'), BadgeInvalidId),
]


@pytest.mark.parametrize("ndef,error", [(m, e) for _, m, e in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_malformed_badge_gives_its_typed_error(ndef, error):
    with pytest.raises(error):
        decode_badge(ndef)


def test_there_are_enough_malformed_cases():
    assert len(MALFORMED) >= 22


def test_valid_cc_round_trip():
    cc = parse_cc(cc_file())
    assert (cc.ndef_file_id, cc.max_ndef_file_size, cc.max_message) == (0xE104, 514, 512)
    assert parse_cc(cc_file(max_ndef_file_size=0x0800)).max_message == MAX_NDEF


BAD_CC = [
    ("short", cc_file()[:14]),
    ("CCLEN below 15", struct.pack(">H", 14) + cc_file()[2:]),
    ("mapping version 3", cc_file(version=0x30)),
    ("MLe below 15", cc_file(max_le=0x0E)),
    ("MLc zero", cc_file(max_lc=0)),
    ("wrong TLV tag", cc_file()[:7] + b"\x05" + cc_file()[8:]),
    ("wrong TLV length", cc_file()[:8] + b"\x07" + cc_file()[9:]),
    ("reserved file id E103", cc_file(file_id=0xE103)),
    ("reserved file id 3F00", cc_file(file_id=0x3F00)),
    ("max size below 5", cc_file(max_ndef_file_size=4)),
    ("max size FFFF", cc_file(max_ndef_file_size=0xFFFF)),
    ("read protected", cc_file(read_access=0x80)),
]


@pytest.mark.parametrize("data", [d for _, d in BAD_CC], ids=[n for n, _ in BAD_CC])
def test_bad_capability_container(data):
    with pytest.raises(BadCapabilityContainer):
        parse_cc(data)


@pytest.mark.parametrize("nlen,max_size,error", [
    (0, 514, NoBadge), (513, 0x0800, BadgeTooLong), (0xFFFF, 0xFFFE, BadgeTooLong), (100, 50, BadgeTooLong),
])
def test_nlen_is_bounded_before_reading(nlen, max_size, error):
    with pytest.raises(error):
        check_nlen(nlen, parse_cc(cc_file(max_ndef_file_size=max_size)))


def test_ndef_file_image():
    msg = encode_badge("alice", "acme")
    assert ndef_file(msg) == struct.pack(">H", len(msg)) + msg


def test_uid_is_masked_in_reprs():
    tap = CardTap(bytes.fromhex("04a1b2c3d4e5f6"), "alice", "acme", "r")
    assert "04a1b2" not in repr(tap) and repr(tap).count("e5f6") == 1
    assert mask_uid(b"\x01\x02\x03\x04") == "****0304"


VALID = [encode_badge(u, o) for u, o in [("alice", "acme"), ("b.o-b_1", "globex"), ("a" * 64, "Z" * 64)]]


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in ops:
        if not buf:
            buf.append(value)
            continue
        pos %= len(buf)
        if kind == 0:
            buf[pos] = value
        elif kind == 1:
            buf.insert(pos, value)
        elif kind == 2:
            del buf[pos]
        else:
            buf[pos] ^= 1 << (value % 8)
    return bytes(buf)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_mutations_give_a_badge_or_a_card_data_error(valid, ops):
    try:
        badge = decode_badge(_mutate(valid, ops))
    except CardDataError:
        return
    assert isinstance(badge, Badge)
    assert badge.user_id and badge.org_id


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    try:
        decode_badge(data)
    except CardDataError:
        pass
