"""hal/panel/client: a blocking client of the firmware's panel socket.

The framing is the control socket's (`firmware/status.py`): one connection per request, one JSON
request line out, one JSON reply line back, then the firmware closes. One method per request:

    screen()                      -> the screen document (a dict; `version` int, `screen` str)
    wait(after, timeout)          -> the document once its version > after, or the current one at
                                     the timeout (long poll, timeout <= 25 s)
    send_pin(digits)              -> hands a PIN over; `digits` is a bytearray of 1..16 ASCII digits
    pin_cancel(), choose_next()
    print_jobs(session, jobs=None)  (None: all of the person's held jobs)
    delete_jobs(session, jobs), logout(session)

Errors (`PanelError`): `PanelUnavailable` (no socket, refused, no reply in time: the firmware is
not there), `PanelProtocolError` (a reply that is not one JSON object), `PanelRefused` (the
firmware answered `{"error": reason}`; `.reason` is the firmware's short, non-secret text).

A PIN never becomes a `str` here: `send_pin` builds the request line as bytes into one bytearray,
exactly `{"cmd": "pin", "pin": "<digits>"}` + newline (the firmware matches that shape as bytes),
and zeroes that line and the caller's `digits` before it returns, whatever happened. No message of
an error carries a digit.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Sequence

DEFAULT_SOCKET = "/run/tenantprint/panel.sock"
MAX_REPLY = 1 << 20     # a screen document is a few kB; a bound against a runaway peer
MAX_WAIT_S = 25.0       # the firmware's limit for a long poll
MAX_PIN = 16

_PIN_HEAD = b'{"cmd": "pin", "pin": "'
_PIN_TAIL = b'"}\n'


class PanelError(Exception):
    """Anything that went wrong talking to the panel socket."""


class PanelUnavailable(PanelError):
    """The firmware's panel socket is not there, refused the connection or did not answer in time."""


class PanelProtocolError(PanelError):
    """The firmware's reply was not one JSON object (or not the document it should be)."""


class PanelRefused(PanelError):
    """The firmware answered with an error; `reason` is its short text (never a secret)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_pin_digits(digits: bytes | bytearray | memoryview) -> bool:
    """True when `digits` is 1..MAX_PIN ASCII digits. Looks at the bytes one by one, as ints."""
    return 0 < len(digits) <= MAX_PIN and all(0x30 <= b <= 0x39 for b in digits)


def wipe(buf: bytearray) -> None:
    """Zero a buffer in place (its length stays: a view of it may still be held)."""
    for i in range(len(buf)):
        buf[i] = 0


class PanelClient:
    """The panel socket at `path`; every call opens its own connection (safe from any thread)."""

    def __init__(self, path: str | Path = DEFAULT_SOCKET, timeout: float = 5.0):
        self.path = str(path)
        self.timeout = timeout

    # -- reads -------------------------------------------------------------------------------

    def screen(self) -> dict:
        return _document(self._call({"cmd": "screen"}))

    def wait(self, after: int, timeout: float = MAX_WAIT_S) -> dict:
        timeout = max(0.0, min(float(timeout), MAX_WAIT_S))
        reply = self._call({"cmd": "wait", "after": int(after), "timeout": timeout},
                           timeout=timeout + self.timeout)
        return _document(reply)

    # -- the person's actions ----------------------------------------------------------------

    def send_pin(self, digits: bytearray) -> None:
        """Hand a PIN to the firmware. `digits` (1..16 ASCII digits) is zeroed on return."""
        if not isinstance(digits, bytearray):
            raise TypeError("a PIN is handed over as a bytearray")
        line = bytearray(len(_PIN_HEAD) + len(digits) + len(_PIN_TAIL))
        try:
            if not is_pin_digits(digits):
                raise ValueError(f"a PIN is 1..{MAX_PIN} ASCII digits")
            end = len(_PIN_HEAD) + len(digits)
            line[:len(_PIN_HEAD)] = _PIN_HEAD
            line[len(_PIN_HEAD):end] = digits
            line[end:] = _PIN_TAIL
            reply = self._exchange(line, self.timeout)
        finally:
            wipe(line)
            wipe(digits)
        _ok(reply)

    def pin_cancel(self) -> None:
        _ok(self._call({"cmd": "pin-cancel"}))

    def choose_next(self) -> None:
        _ok(self._call({"cmd": "choose-next"}))

    def print_jobs(self, session: int, jobs: Sequence[int] | None = None) -> None:
        request: dict = {"cmd": "print", "session": int(session)}
        if jobs is not None:
            request["jobs"] = [int(j) for j in jobs]
        _ok(self._call(request))

    def delete_jobs(self, session: int, jobs: Sequence[int]) -> None:
        _ok(self._call({"cmd": "delete", "session": int(session), "jobs": [int(j) for j in jobs]}))

    def logout(self, session: int) -> None:
        _ok(self._call({"cmd": "logout", "session": int(session)}))

    # -- the wire ----------------------------------------------------------------------------

    def _call(self, request: dict, timeout: float | None = None) -> dict:
        return self._exchange(json.dumps(request).encode() + b"\n",
                              self.timeout if timeout is None else timeout)

    def _exchange(self, line: bytes | bytearray, timeout: float) -> dict:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout)
                conn.connect(self.path)
                conn.sendall(line)
                reply = _read_line(conn)
        except (OSError, socket.timeout) as exc:
            raise PanelUnavailable(f"panel socket {self.path}: {exc.strerror or type(exc).__name__}") from None
        try:
            decoded = json.loads(reply)
        except ValueError:
            raise PanelProtocolError("the panel socket's reply is not JSON") from None
        if not isinstance(decoded, dict):
            raise PanelProtocolError("the panel socket's reply is not a JSON object")
        return decoded


def _read_line(conn: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REPLY:
            raise PanelProtocolError("the panel socket's reply is too long")
        if b"\n" in chunk:
            break
    reply = b"".join(chunks)
    if not reply.strip():
        raise PanelUnavailable("the panel socket closed without a reply")
    return reply.split(b"\n", 1)[0]


def _ok(reply: dict) -> None:
    if "error" in reply:
        raise PanelRefused(str(reply["error"])[:200])
    if reply.get("ok") is not True:
        raise PanelProtocolError("the panel socket's reply is neither ok nor an error")


def _document(reply: dict) -> dict:
    if "error" in reply:
        raise PanelRefused(str(reply["error"])[:200])
    version, screen = reply.get("version"), reply.get("screen")
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(screen, str):
        raise PanelProtocolError("the screen document has no version or screen")
    return reply
