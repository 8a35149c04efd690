"""A minimal IPP client: one Get-Printer-Attributes over one connection, with a short connect timeout.

libcups (and so pycups) connects with a 30 s timeout and needs a process-global server setting; a
readiness probe across a WAN wants neither: it wants one TCP connection and one request — two round
trips — and to give up on a lost SYN after a fraction of a second. Only what a probe needs is
decoded: text, keyword, URI, integer, enum and boolean values; anything else stays bytes.
"""

from __future__ import annotations

import http.client
import struct
from dataclasses import dataclass
from urllib.parse import urlparse

GET_PRINTER_ATTRIBUTES = 0x000B
_OPERATION_GROUP, _END = 0x01, 0x03
_TEXT_TAGS = {0x41, 0x42, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49}  # text, name, keyword, uri, scheme, charset, lang, mime
_INT_TAGS = {0x21, 0x23}  # integer, enum
_BOOL_TAG = 0x22
_EXTENSION_TAG = 0x7F


class IppError(Exception):
    """The printer could not be reached, or answered with something that is not an IPP success."""


@dataclass(frozen=True)
class IppResponse:
    status: int
    request_id: int
    attributes: dict[str, list]  # every group's attributes, by name (later groups win)


def _attr(tag: int, name: str, value: bytes) -> bytes:
    n = name.encode()
    return struct.pack(">BH", tag, len(n)) + n + struct.pack(">H", len(value)) + value


def encode_get_printer_attributes(printer_uri: str, requested: list[str], request_id: int = 1) -> bytes:
    """Pure: an IPP/2.0 Get-Printer-Attributes request."""
    if not requested:
        raise ValueError("ask for at least one attribute")
    out = struct.pack(">BBHI", 2, 0, GET_PRINTER_ATTRIBUTES, request_id) + bytes([_OPERATION_GROUP])
    out += _attr(0x47, "attributes-charset", b"utf-8")
    out += _attr(0x48, "attributes-natural-language", b"en")
    out += _attr(0x45, "printer-uri", printer_uri.encode())
    out += _attr(0x44, "requested-attributes", requested[0].encode())
    for extra in requested[1:]:
        out += _attr(0x44, "", extra.encode())  # an additional value of the same attribute
    return out + bytes([_END])


def _value(tag: int, raw: bytes):
    if tag in _TEXT_TAGS:
        return raw.decode("utf-8", "replace")
    if tag in _INT_TAGS and len(raw) == 4:
        return struct.unpack(">i", raw)[0]
    if tag == _BOOL_TAG and len(raw) == 1:
        return raw != b"\x00"
    return raw


def decode_response(data: bytes) -> IppResponse:
    """Pure: an IPP response's status, request id and attributes; IppError when it is truncated."""
    if len(data) < 9:
        raise IppError(f"IPP response too short ({len(data)} bytes)")
    _major, _minor, status, request_id = struct.unpack(">BBHI", data[:8])
    attrs: dict[str, list] = {}
    last: list | None = None
    i = 8
    while True:
        if i >= len(data):
            raise IppError("IPP response ends before its end-of-attributes tag")
        tag = data[i]
        i += 1
        if tag == _END:
            break
        if tag < 0x10:  # the start of another attribute group
            last = None
            continue
        if tag == _EXTENSION_TAG:
            raise IppError("IPP response uses an extension tag this client does not read")
        if i + 2 > len(data):
            raise IppError("IPP response truncated in an attribute name")
        (nlen,) = struct.unpack(">H", data[i:i + 2])
        name = data[i + 2:i + 2 + nlen].decode("utf-8", "replace")
        i += 2 + nlen
        if i + 2 > len(data):
            raise IppError("IPP response truncated in an attribute value")
        (vlen,) = struct.unpack(">H", data[i:i + 2])
        raw = data[i + 2:i + 2 + vlen]
        if len(raw) != vlen:
            raise IppError("IPP response truncated in an attribute value")
        i += 2 + vlen
        if name:
            last = attrs[name] = [_value(tag, raw)]
        elif last is not None:  # another value of the attribute before (or a collection member)
            last.append(_value(tag, raw))
    return IppResponse(status, request_id, attrs)


def get_printer_attributes(printer_uri: str, requested: list[str], connect_timeout: float = 0.5,
                           read_timeout: float = 10.0) -> dict[str, list]:
    """Ask the printer at `printer_uri` (ipp://host[:port]/path) for `requested` over one connection.

    Raises IppError when it cannot be reached within `connect_timeout`, does not answer within
    `read_timeout`, or answers with an HTTP or IPP error."""
    url = urlparse(printer_uri)
    if url.scheme != "ipp" or not url.hostname:
        raise ValueError(f"not an ipp:// printer URI: {printer_uri!r}")
    body = encode_get_printer_attributes(printer_uri, requested)
    conn = http.client.HTTPConnection(url.hostname, url.port or 631, timeout=connect_timeout)
    try:
        try:
            conn.connect()
        except OSError as exc:
            raise IppError(f"no connection ({exc.strerror or exc})") from None
        conn.sock.settimeout(read_timeout)
        try:
            conn.request("POST", url.path or "/", body, {"Content-Type": "application/ipp"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise IppError(f"no answer ({exc})") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise IppError(f"HTTP {resp.status} {resp.reason}")
    answer = decode_response(data)
    if answer.status > 0x00FF:
        raise IppError(f"IPP status 0x{answer.status:04x}")
    return answer.attributes
