"""vpcd's socket protocol (vsmartcard), card side.

The virtual card connects to vpcd (TCP 35963 for the first reader slot). Every message either way
is a 2-byte big-endian length then that many bytes. From vpcd, a 1-byte message is a control
command (`CTRL_*`); anything longer is a command APDU. The card answers `CTRL_ATR` with its ATR
and each APDU with the response APDU; power on/off/reset get no answer. While the connection is
open the card is present in the reader; closing it removes the card.
"""

from __future__ import annotations

import socket
import struct

VPCD_PORT = 35963
CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0, 1, 2, 4


def connect(host: str = "127.0.0.1", port: int = VPCD_PORT, timeout: float = 1.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    # Without these, each APDU waits for a delayed ACK (~44 ms); with them, ~0.2 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    quickack(sock)
    sock.settimeout(None)
    return sock


def quickack(sock: socket.socket) -> None:
    """TCP_QUICKACK is not sticky on Linux: set it again after every receive."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return None
        quickack(sock)
        buf += part
    return bytes(buf)


def recv_frame(sock: socket.socket) -> bytes | None:
    """The next message from vpcd, or None when the connection closed."""
    head = _recv_exact(sock, 2)
    if head is None:
        return None
    (length,) = struct.unpack(">H", head)
    return _recv_exact(sock, length) if length else b""


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack(">H", len(data)) + data)
