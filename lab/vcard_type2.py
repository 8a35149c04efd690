"""An NTAG (NFC Forum Type 2) behind a PC/SC reader, for vpcd: the PC/SC path of Type 2 badges.

A PC/SC part 3 reader shows a storage card with a made-up ATR (`hal.card.atr.storage_atr`, card name
00 03 = Ultralight/NTAG) and reads it with pseudo-APDUs: `FF CA 00 00 00` the UID, `FF B0 00 <page>
10` 16 bytes from a page (4 pages, wrapping like an NTAG). `Type2StorageApplet` answers exactly
those; `Type2Presence` holds one such card in vpcd's slot (the same vpcd protocol as `lab.vcard`,
whose card must be removed first: a slot holds one card).

    python -m lab.vcard_type2 --user alice --org acme [--uid 04a1b2c3d4e5f6] [--vpcd-port 35963]

run on the lab host that runs pcscd, holds the card until interrupted.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

from hal.card.atr import storage_atr
from lab import vpcd_protocol as vpcd

ATR = storage_atr(0x0003)
SW_OK, SW_NOT_FOUND, SW_INS = b"\x90\x00", b"\x6A\x82", b"\x6D\x00"


class Type2StorageApplet:
    """Answers a PC/SC reader's storage-card pseudo-APDUs for a Type 2 memory image."""

    def __init__(self, uid: bytes, memory: bytes):
        self.uid, self.memory = uid, memory

    def reset(self) -> None:
        pass

    def process(self, apdu: bytes) -> bytes:
        if apdu[:4] == b"\xff\xca\x00\x00":
            return self.uid + SW_OK
        if apdu[:3] == b"\xff\xb0\x00" and len(apdu) == 5:
            start = apdu[3] * 4
            if start >= len(self.memory):
                return SW_NOT_FOUND
            length = apdu[4] or 256
            return (self.memory + self.memory)[start:start + length] + SW_OK
        return SW_INS


class Type2Presence:
    """The card in vpcd's slot while this object lives (reconnects if vpcd restarts)."""

    def __init__(self, applet: Type2StorageApplet, port: int = vpcd.VPCD_PORT, *, thread=None):
        """`thread(target)` starts the serving thread (default: a plain thread; a lab host's
        `Host.thread` to reach the vpcd of that host's network namespace)."""
        self.applet, self.port = applet, port
        self.stopped, self.connected = threading.Event(), threading.Event()
        self.sock: socket.socket | None = None
        if thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        else:
            self.thread = thread(self._run)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                sock = vpcd.connect(port=self.port)
            except OSError:
                time.sleep(0.05)
                continue
            self.sock = sock
            self.connected.set()
            try:
                self._serve(sock)
            except OSError:
                pass
            finally:
                self.connected.clear()
                sock.close()

    def _serve(self, sock: socket.socket) -> None:
        while (msg := vpcd.recv_frame(sock)) is not None:
            if len(msg) == 1:
                if msg[0] == vpcd.CTRL_ATR:
                    vpcd.send_frame(sock, ATR)
                continue
            vpcd.send_frame(sock, self.applet.process(msg))

    def stop(self) -> None:
        self.stopped.set()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=2)


def main(argv: list[str] | None = None) -> int:
    from hal.card.badge_write import badge_message, type2_image
    p = argparse.ArgumentParser(prog="python -m lab.vcard_type2", description=__doc__.splitlines()[0])
    p.add_argument("--uid", default="04a1b2c3d4e5f6")
    p.add_argument("--user", default="alice")
    p.add_argument("--org", default="acme")
    p.add_argument("--blank", action="store_true", help="a tag without NDEF (known by its UID only)")
    p.add_argument("--vpcd-port", type=int, default=vpcd.VPCD_PORT)
    args = p.parse_args(argv)
    uid = bytes.fromhex(args.uid)
    memory = type2_image(None if args.blank else badge_message(args.user, args.org), uid)
    presence = Type2Presence(Type2StorageApplet(uid, memory), args.vpcd_port)
    print(f"NTAG in vpcd slot {args.vpcd_port}: connected={presence.connected.wait(3)}", file=sys.stderr)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    presence.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
