"""LAB ONLY: the office LAN's time server for the VM MFP (`lab up --mfp vm`), a minimal SNTP server
(RFC 4330 section 5) answering from this machine's clock as a stratum-2 server would.

The guest's systemd-timesyncd asks it (the office's DHCP server names it, lab/services/dhcp.py,
as a coworking LAN's would); once it answers, timesyncd marks the guest's
clock synchronised and the firmware's clock gate opens. `lab fault ntp-block` stops this server.

    python -m lab.ntp_server --listen 10.77.0.9:123
"""

from __future__ import annotations

import argparse
import socket
import struct
import time

NTP_EPOCH_OFFSET = 2208988800  # 1900-01-01 to 1970-01-01, in seconds
PACKET = struct.Struct("!BBbbII4sQQQQ")  # 48 bytes: LI/VN/mode, stratum, poll, precision, ...
MODE_CLIENT, MODE_SERVER = 3, 4
STRATUM = 2


class NtpError(ValueError):
    """A datagram that is not an NTP client request."""


def to_ntp(t: float) -> int:
    """Unix time as a 64-bit NTP timestamp (32.32 fixed point since 1900)."""
    seconds = int(t) + NTP_EPOCH_OFFSET
    return (seconds << 32) | int((t - int(t)) * (1 << 32))


def from_ntp(ts: int) -> float:
    return (ts >> 32) - NTP_EPOCH_OFFSET + (ts & 0xFFFFFFFF) / (1 << 32)


def answer(request: bytes, received: float, now: float, refid: bytes = b"\x0a\x4e\x00\x01") -> bytes:
    """The server's reply to one client request: the client's transmit timestamp echoed as the
    origin (what the client matches its reply by), our receive and transmit times, leap indicator
    0 (synchronised), stratum 2, zero root delay and dispersion. Raises NtpError for anything else."""
    if len(request) < PACKET.size:
        raise NtpError(f"{len(request)} bytes: shorter than an NTP header")
    first, *_rest, transmit = PACKET.unpack_from(request)
    version, mode = (first >> 3) & 0x7, first & 0x7
    if mode != MODE_CLIENT or not 1 <= version <= 4:
        raise NtpError(f"mode {mode} version {version}: not a client request")
    return PACKET.pack((0 << 6) | (version << 3) | MODE_SERVER, STRATUM, 4, -20, 0, 0, refid,
                       to_ntp(now - 1), transmit, to_ntp(received), to_ntp(now))


def serve(address: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    print(f"ntp: serving {address}:{port}", flush=True)
    while True:
        data, peer = sock.recvfrom(512)
        received = time.time()
        try:
            sock.sendto(answer(data, received, time.time()), peer)
        except NtpError as exc:
            print(f"ntp: ignored a datagram from {peer[0]}: {exc}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.ntp_server")
    p.add_argument("--listen", required=True, metavar="ADDR:PORT")
    a = p.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    serve(host, int(port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
