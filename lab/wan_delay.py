"""A userspace WAN delay for the lab's router (this kernel has no netem).

Runs on the `inet` host. Policy routing sends every packet that crosses between the office LAN and
the WAN into a TUN device; this program holds each packet for half the round-trip time and writes it
back into the TUN, from where the kernel routes it on normally (a packet re-entering from the TUN does
not match the rule again, which matches only the LAN and WAN bridges as input interfaces).

    python -m lab.wan_delay --rtt-ms 40 --dev wdelay0
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import os
import select
import struct
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def run(fd: int, one_way_s: float, max_queue: int = 10000) -> None:
    pending: list[tuple[float, int, bytes]] = []
    seq = 0
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        ready, _, _ = select.select([fd], [], [], timeout)
        if ready:
            packet = os.read(fd, 65535)
            if len(pending) < max_queue:  # a full queue drops, like a real link
                seq += 1
                heapq.heappush(pending, (time.monotonic() + one_way_s, seq, packet))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, packet = heapq.heappop(pending)
            os.write(fd, packet)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.wan_delay")
    p.add_argument("--rtt-ms", type=float, required=True)
    p.add_argument("--dev", default="wdelay0")
    args = p.parse_args(argv)
    fd = open_tun(args.dev)
    run(fd, args.rtt_ms / 2000.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
