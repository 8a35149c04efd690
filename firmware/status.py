"""The daemon's control socket: the operation panel's and the operator's way in.

A local unix socket (mode 0600). A client sends one JSON request line and reads one JSON reply line:

    {"cmd": "status"}               -> the status document (state, org, panel, tunnel, held jobs, audit)
    {"cmd": "pin", "pin": "<digits>"}  -> hands a PIN typed on the panel to the waiting authentication
    {"cmd": "pin-cancel"}           -> the user gave up entering the PIN
    {"cmd": "clear-fault"}          -> the operator clears a latched fault (a purge is retried)

An empty request is taken as "status". Replies never contain secrets or PINs.

A PIN never becomes a Python `str` in the daemon (a str cannot be erased, and lingers in the heap
after the purge): the request is read with `recv_into` into one bytearray, a PIN request is
recognised by a pattern over those bytes, its digits are copied into a `Pin` and the buffer is
zeroed before anything else happens. A PIN request in any other shape is refused unread.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from pathlib import Path
from typing import Awaitable, Callable

from firmware.events import Pin

MAX_REQUEST = 4096
MAX_PIN = 16

Handler = Callable[[dict], Awaitable[dict]]
PinHandler = Callable[[Pin], dict]

_PIN_REQUEST = re.compile(
    rb'\s*\{\s*(?:"cmd"\s*:\s*"pin"\s*,\s*"pin"\s*:\s*"(\d{1,%d})"|"pin"\s*:\s*"(\d{1,%d})"\s*,\s*"cmd"\s*:\s*"pin")'
    rb'\s*\}\s*' % (MAX_PIN, MAX_PIN))
_MENTIONS_PIN = re.compile(rb'"pin"\s*:\s*"')


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def parse_pin(buf: bytearray, end: int) -> Pin | None:
    """The PIN of a PIN request in buf[:end] (None when it is not one). Copies no digit anywhere
    but into the Pin."""
    m = _PIN_REQUEST.fullmatch(buf, 0, end)
    if m is None:
        return None
    group = 1 if m.start(1) >= 0 else 2
    with memoryview(buf) as view:
        return Pin(view[m.start(group):m.end(group)])


def decode(buf: bytearray, end: int, on_pin: PinHandler) -> dict:
    """The request in buf[:end] as a dict, or the PIN handler's reply for a PIN request. Zeroes
    the buffer when it held a PIN (or anything that looked like one)."""
    if _MENTIONS_PIN.search(buf, 0, end):
        pin = parse_pin(buf, end)
        _wipe(buf)
        if pin is None:
            return {"reply": {"error": 'a PIN request is exactly {"cmd": "pin", "pin": "<digits>"}'}}
        return {"reply": on_pin(pin)}
    text = bytes(buf[:end]).strip()
    request = json.loads(text) if text else {"cmd": "status"}
    if not isinstance(request, dict):
        raise ValueError("a request is one JSON object")
    return {"request": request}


async def serve(path: str | Path, handle: Handler, on_pin: PinHandler, *, group: str = "") -> asyncio.AbstractServer:
    """Serve requests on `path`, answering each with `await handle(request)` (PINs: `on_pin`).
    The socket is root's alone (0600), or also `group`'s (0660) when one is named."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    loop = asyncio.get_running_loop()

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    if group:
        import grp
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, 0o660)
    listener.listen(16)
    listener.setblocking(False)

    async def read_request(conn: socket.socket, buf: bytearray) -> int:
        n = 0
        with memoryview(buf) as view:
            while n < len(buf):
                got = await loop.sock_recv_into(conn, view[n:])
                if not got:
                    break
                n += got
                if buf.find(b"\n", 0, n) >= 0:
                    break
        return n

    async def on_client(conn: socket.socket) -> None:
        buf = bytearray(MAX_REQUEST + 1)
        try:
            n = await asyncio.wait_for(read_request(conn, buf), timeout=5)
            try:
                if n > MAX_REQUEST:
                    _wipe(buf)
                    raise ValueError("request too long")
                decoded = decode(buf, n, on_pin)
                reply = decoded["reply"] if "reply" in decoded else await handle(decoded["request"])
            except ValueError as exc:
                reply = {"error": str(exc)}
            await loop.sock_sendall(conn, json.dumps(reply).encode() + b"\n")
        except (asyncio.TimeoutError, OSError):
            pass
        finally:
            _wipe(buf)
            conn.close()

    async def accept_forever() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            loop.create_task(on_client(conn))

    return _Server(listener, loop.create_task(accept_forever()))


class _Server:
    """What `serve` returns: `close()` stops accepting."""

    def __init__(self, listener: socket.socket, task: asyncio.Task):
        self._listener, self._task = listener, task

    def close(self) -> None:
        self._task.cancel()
        self._listener.close()

    async def wait_closed(self) -> None:
        try:
            await self._task
        except (asyncio.CancelledError, OSError):
            pass


def request(path: str | Path, req: dict | None = None, timeout: float = 5.0) -> dict:
    """Send one request to the daemon (blocking). Raises OSError if the daemon is not there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(req or {"cmd": "status"}).encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))
