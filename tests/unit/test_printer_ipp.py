"""hal/printer/ipp: the IPP wire format of the readiness probe (pure parts)."""

from __future__ import annotations

import struct

import pytest

from hal.printer.ipp import IppError, decode_response, encode_get_printer_attributes


def _attr(tag: int, name: str, value: bytes) -> bytes:
    return struct.pack(">BH", tag, len(name)) + name.encode() + struct.pack(">H", len(value)) + value


def _response(status: int, *groups: bytes) -> bytes:
    return struct.pack(">BBHI", 2, 0, status, 7) + b"".join(groups) + b"\x03"


OPERATION = b"\x01" + _attr(0x47, "attributes-charset", b"utf-8") + _attr(0x48, "attributes-natural-language", b"en")


def test_request_layout():
    req = encode_get_printer_attributes("ipp://10.0.0.1:631/printers/q", ["printer-make-and-model", "printer-state"],
                                        request_id=42)
    assert req[:8] == struct.pack(">BBHI", 2, 0, 0x000B, 42)
    assert req[8] == 0x01 and req[-1] == 0x03
    # decoded with the response reader (same attribute encoding): the URI and both requested names
    attrs = decode_response(req).attributes
    assert attrs["printer-uri"] == ["ipp://10.0.0.1:631/printers/q"]
    assert attrs["requested-attributes"] == ["printer-make-and-model", "printer-state"]
    # charset and language come first, as RFC 8011 requires
    assert list(attrs)[:2] == ["attributes-charset", "attributes-natural-language"]


def test_request_needs_an_attribute():
    with pytest.raises(ValueError):
        encode_get_printer_attributes("ipp://h/p", [])


def test_response_values_by_type():
    printer = (b"\x04" + _attr(0x41, "printer-make-and-model", b"Acme LaserJet")
               + _attr(0x23, "printer-state", struct.pack(">i", 3))
               + _attr(0x22, "printer-is-accepting-jobs", b"\x01")
               + _attr(0x44, "document-format-supported", b"application/pdf")
               + _attr(0x44, "", b"image/urf")
               + _attr(0x30, "printer-alert", b"\x00\x01"))  # octetString stays bytes
    r = decode_response(_response(0x0000, OPERATION, printer))
    assert (r.status, r.request_id) == (0, 7)
    assert r.attributes["printer-make-and-model"] == ["Acme LaserJet"]
    assert r.attributes["printer-state"] == [3]
    assert r.attributes["printer-is-accepting-jobs"] == [True]
    assert r.attributes["document-format-supported"] == ["application/pdf", "image/urf"]
    assert r.attributes["printer-alert"] == [b"\x00\x01"]


def test_error_status_is_reported_not_raised_by_the_decoder():
    assert decode_response(_response(0x0406, OPERATION)).status == 0x0406


@pytest.mark.parametrize("cut", [3, 9, 12, 20, -1])
def test_truncated_responses_are_errors(cut):
    data = _response(0, OPERATION, b"\x04" + _attr(0x41, "printer-make-and-model", b"Acme"))
    with pytest.raises(IppError):
        decode_response(data[:cut])


def test_groups_keep_each_printer_apart():
    one = b"\x04" + _attr(0x42, "printer-name", b"a") + _attr(0x23, "printer-state", struct.pack(">i", 3))
    two = b"\x04" + _attr(0x42, "printer-name", b"b") + _attr(0x23, "printer-state", struct.pack(">i", 5))
    r = decode_response(_response(0, OPERATION, one, two))
    printers = [a for tag, a in r.groups if tag == 0x04]
    assert [(a["printer-name"], a["printer-state"]) for a in printers] == [(["a"], [3]), (["b"], [5])]
    assert r.groups[0][0] == 0x01 and r.attributes["printer-name"] == ["b"]  # merged view: later wins


def test_get_printers_request_has_no_printer_uri():
    from hal.printer.ipp import CUPS_GET_PRINTERS, encode_request

    req = encode_request(CUPS_GET_PRINTERS, None, ["printer-name", "device-uri"])
    assert struct.unpack(">H", req[2:4])[0] == 0x4002
    assert "printer-uri" not in decode_response(req).attributes
