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


# -- bounded reads against a loopback fake server ----------------------------------------------------

import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from hal.printer.ipp import MAX_ANSWER, get_printer_attributes  # noqa: E402


def _read_request(conn) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += conn.recv(65536)


def _serve_once(answer) -> tuple[int, threading.Thread]:
    """A loopback server that reads one request and then runs `answer(conn)`."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def run():
        conn, _ = srv.accept()
        try:
            _read_request(conn)
            answer(conn)
        except OSError:
            pass
        finally:
            conn.close()
            srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return port, t


def _valid_answer() -> bytes:
    return _response(0, OPERATION, b"\x04" + _attr(0x41, "printer-make-and-model", b"Acme"))


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_an_answer_over_the_limit_is_refused(framing):
    big = _response(0, OPERATION, b"\x04" + b"".join(_attr(0x41, "x", b"y" * 60000) for _ in range(20)))
    assert len(big) > MAX_ANSWER

    def answer(conn):
        if framing == "length":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/ipp\r\nContent-Length: %d\r\n\r\n" % len(big))
            conn.sendall(big)
        elif framing == "chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/ipp\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(big), 32768):
                part = big[i:i + 32768]
                conn.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
            conn.sendall(b"0\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/ipp\r\n\r\n" + big)

    port, t = _serve_once(answer)
    with pytest.raises(IppError, match="larger than"):
        get_printer_attributes(f"ipp://127.0.0.1:{port}/printers/q", ["printer-make-and-model"], read_timeout=5)
    t.join(5)


def test_an_answer_at_the_limit_is_read():
    port, t = _serve_once(lambda conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(_valid_answer()) + _valid_answer()))
    attrs = get_printer_attributes(f"ipp://127.0.0.1:{port}/printers/q", ["printer-make-and-model"], read_timeout=5)
    assert attrs["printer-make-and-model"] == ["Acme"]
    t.join(5)


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_trickling_server_holds_the_caller_no_longer_than_the_deadline(where):
    data = _valid_answer()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data)
    stop = threading.Event()

    def answer(conn):
        if where == "body":
            conn.sendall(head)
        for byte in (head if where == "headers" else data):  # one byte every 50 ms: each read is quick
            if stop.wait(0.05):
                return
            conn.sendall(bytes([byte]))

    port, t = _serve_once(answer)
    started = time.monotonic()
    with pytest.raises(IppError, match="within 0.3 s"):
        get_printer_attributes(f"ipp://127.0.0.1:{port}/printers/q", ["printer-make-and-model"], read_timeout=0.3)
    assert time.monotonic() - started < 0.6
    stop.set()
    t.join(5)
