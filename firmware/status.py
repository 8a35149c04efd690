"""The daemon's control socket: the operation panel's and the operator's way in.

A local unix socket (mode 0600). A client sends one JSON request line and reads one JSON reply line:

    {"cmd": "status"}               -> the status document (state, org, panel, tunnel, held jobs, audit)
    {"cmd": "pin", "pin": "2468"}   -> hands a PIN typed on the panel to the waiting authentication
    {"cmd": "pin-cancel"}           -> the user gave up entering the PIN
    {"cmd": "clear-fault"}          -> the operator clears a latched fault (a purge is retried)

An empty request is taken as "status". Replies never contain secrets or PINs.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Awaitable, Callable

MAX_REQUEST = 4096

Handler = Callable[[dict], Awaitable[dict]]


async def serve(path: str | Path, handle: Handler) -> asyncio.AbstractServer:
    """Serve requests on `path`, answering each with `await handle(request)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            try:
                request = json.loads(line) if line.strip() else {"cmd": "status"}
                if not isinstance(request, dict) or len(line) > MAX_REQUEST:
                    raise ValueError("a request is one JSON object")
                reply = await handle(request)
            except ValueError as exc:
                reply = {"error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_client, path=str(path))
    finally:
        os.umask(old)
    return server


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
