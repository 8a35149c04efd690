"""hal/panel/web_rules: what the web panel accepts, as pure functions (no sockets, no server).

Each check raises `Refused(status, reason)` (a `WebPanelError`) or returns what it parsed. The
reasons are short fixed texts: never an echo of what the client sent (a refused PIN body is not
quoted anywhere).

- `listen_address("127.0.0.1:8650")` -> (host, port); a listen address that is not a loopback
  literal (or `localhost`) raises `NotLoopback` before any socket exists.
- `check_peer(ip)`: the connection's peer must be a loopback address (IPv4-mapped ones too).
- `check_host(host, port)`: the Host header must be exactly `127.0.0.1:<port>`, `localhost:<port>`
  or `[::1]:<port>` (a DNS-rebound name is refused even though its packets arrive on loopback).
- `check_origin(origin, fetch_site, port)`: a POST carries no Origin or `http://` + one of those
  hosts; `Sec-Fetch-Site`, when sent, is `same-origin` or `none`.
- `check_content(content_type, length, expected, limit)`: the media type of the route, a
  Content-Length within its bound (no chunked bodies).
- `check_pin_body(buf)`: 1..16 ASCII digits, checked byte by byte, never decoded.
- `parse_action(body, screen)`, `parse_lang(body)`: the JSON bodies of /action and /lang.
"""

from __future__ import annotations

import ipaddress
import json

from hal.panel.client import MAX_PIN, is_pin_digits

MAX_JSON_BODY = 4096
MAX_JOBS = 200
LANGS = ("en", "ja")
ACTIONS = ("pin-cancel", "choose-next", "print", "delete", "logout")
_SESSION_ACTIONS = ("print", "delete", "logout")


class WebPanelError(Exception):
    """Anything the web panel refuses or cannot do."""


class NotLoopback(WebPanelError):
    """The web panel was asked to listen on an address that is not the device's loopback."""


class Refused(WebPanelError):
    """A request the web panel answers with `status` and a short fixed `reason`."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


# -- where the service listens and who may talk to it --------------------------------------------

def listen_address(text: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) -> (host, port); only loopback literals or `localhost`."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise NotLoopback(f"listen address {text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise NotLoopback(f"listen address {text!r}: an IPv6 address goes in brackets, [::1]:port")
    if host.lower() == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NotLoopback(f"listen address {text!r} is not a loopback address") from None
    if not address.is_loopback:
        raise NotLoopback(f"listen address {text!r} is not a loopback address")
    return host, int(port_text)


def is_loopback(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def check_peer(ip: str) -> None:
    if not is_loopback(ip):
        raise Refused(403, "loopback clients only")


def allowed_hosts(port: int) -> frozenset[str]:
    return frozenset({f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"})


def check_host(host: str | None, port: int) -> None:
    if host is None or host.strip().lower() not in allowed_hosts(port):
        raise Refused(403, "unexpected Host")


def check_origin(origin: str | None, fetch_site: str | None, port: int) -> None:
    if origin is not None:
        scheme, _, rest = origin.strip().lower().partition("://")
        if scheme != "http" or rest not in allowed_hosts(port):
            raise Refused(403, "cross-origin request")
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        raise Refused(403, "cross-site request")


# -- bodies -------------------------------------------------------------------------------------

def check_content(content_type: str | None, length: str | None, chunked: bool, expected: str,
                  limit: int) -> int:
    """The body's length, once its media type and size are what the route takes."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != expected:
        raise Refused(415, f"the body must be {expected}")
    if chunked:
        raise Refused(411, "a body needs a Content-Length")
    if length is None or not length.strip().isdigit():
        raise Refused(411, "a body needs a Content-Length")
    size = int(length)
    if size > limit:
        raise Refused(413, "body too large")
    return size


def check_pin_body(buf: bytearray) -> None:
    if not is_pin_digits(buf):
        raise Refused(400, f"a PIN is 1..{MAX_PIN} ASCII digits")


def _json_object(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise Refused(400, "the body is not a JSON object")
    return value


def parse_lang(body: bytes) -> str:
    value = _json_object(body)
    if set(value) != {"lang"} or value["lang"] not in LANGS:
        raise Refused(400, 'the body is {"lang": "en"|"ja"}')
    return value["lang"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_action(body: bytes, screen: dict | None) -> dict:
    """The firmware request for an /action body, checked against the screen the server shows now.

    Body: `{"action": A, "session": N|null, "jobs": [ids]}` (`jobs` only for print/delete). print,
    delete and logout need `session` equal to the current screen's (409 when the page is stale) and
    jobs that the current jobs screen lists; the returned request carries that session."""
    value = _json_object(body)
    action = value.get("action")
    if action not in ACTIONS or not set(value) <= {"action", "session", "jobs"}:
        raise Refused(400, "unknown action")
    if screen is None:
        raise Refused(503, "panel not connected")
    if action not in _SESSION_ACTIONS:
        if set(value) - {"action", "session"}:
            raise Refused(400, "unexpected fields")
        return {"cmd": action}
    session = screen.get("session")
    if not _is_int(value.get("session")) or not _is_int(session) or value["session"] != session:
        raise Refused(409, "the screen has changed")
    request: dict = {"cmd": action, "session": session}
    if "jobs" in value:
        if action == "logout":
            raise Refused(400, "unexpected fields")
        request["jobs"] = _chosen_jobs(value["jobs"], screen)
    elif action == "delete":
        raise Refused(400, "delete needs jobs")
    return request


def _chosen_jobs(jobs: object, screen: dict) -> list[int]:
    if (not isinstance(jobs, list) or not 0 < len(jobs) <= MAX_JOBS
            or not all(_is_int(j) for j in jobs) or len(set(jobs)) != len(jobs)):
        raise Refused(400, f"jobs is a list of 1..{MAX_JOBS} distinct job ids")
    shown = {j.get("id") for j in screen.get("jobs") or () if isinstance(j, dict)}
    if screen.get("screen") != "jobs" or not set(jobs) <= shown:
        raise Refused(409, "the screen has changed")
    return list(jobs)
