"""The daemon's status socket: one JSON document per connection, for `tenantprint firmware status`
and the lab. Local only (a unix socket, mode 0600); it never contains secrets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Callable


async def serve(path: str | Path, snapshot: Callable[[], dict]) -> asyncio.AbstractServer:
    """Answer every connection with `snapshot()` as JSON, then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(snapshot()).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handle, path=str(path))
    finally:
        os.umask(old)
    return server


def query(path: str | Path, timeout: float = 5.0) -> dict:
    """Read the daemon's status (blocking). Raises OSError if the daemon is not there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))
