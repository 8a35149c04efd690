"""A card on the far end of nfcpy's `udp` reader driver: tests and benches run the real
`NfcpyReader` (`udp:127.0.0.1:<port>`) with no hardware.

nfcpy's udp driver sends each frame as one datagram `"<bitrate> <hex>"` (`106A 26`, `212F 0600ffff0100`)
and takes the first answer from whoever answers. `NfcSim` binds a loopback UDP port and answers as
the card it is holding:

- `Type2Card`: ISO 14443-3A anticollision (7-byte UID, two cascade levels), then READ (`30 pp`: 16
  bytes from its memory image, wrapping), GET_VERSION (`60`: an NTAG21x by size), NAK (`00`) to
  anything else (nfcpy's NXP probe sends `1A` and then selects the tag again);
- `Type4Card`: anticollision with SAK 20, RATS -> ATS, ISO-DEP I-blocks carrying APDUs to the lab's
  Type 4 applet (`lab.vcard.Type4Applet`), R(NAK) presence checks, DESELECT;
- `Type3Card`: nfcpy's own `Type3TagEmulation` answers polling and Check/Update of the NDEF service
  (000B/0009) from a block list.

With no card (or a card of another technology) a poll is answered `RFOFF`, which nfcpy's driver takes
as a broken link at once, instead of waiting its 1 s per technology. A removed card simply stops
answering, as a real one leaves the field. Images come from `hal.card.badge_write`.

    sim = NfcSim(); sim.start()                  # sim.path == "udp:127.0.0.1:<port>"
    sim.present(Type2Card(uid, type2_image(badge_message("alice", "acme"), uid)))
    sim.remove(); sim.stop()

`python -m lab.nfc_sim --port 54321 --card type2|type3|type4|uid-only --user alice --org acme` holds
one card until interrupted.
"""

from __future__ import annotations

import argparse
import socket
import threading
from binascii import hexlify, unhexlify
from functools import reduce
from operator import xor

from hal.card.badge import CC_FILE_ID, NDEF_FILE_ID

RFOFF = b"RFOFF"
SENSE_POLLS = {("106A", b"\x26"), ("106B", bytes.fromhex("050010")), ("212F", bytes.fromhex("0600ffff0100"))}


class Type2Card:
    """An NXP Type 2 tag (NTAG21x) with a 7-byte UID and a memory image from page 0."""
    brty = "106A"
    sens_res, sak = b"\x44\x00", 0x00
    VERSIONS = {144: "0004040201000F03", 496: "0004040201001103", 872: "0004040201001303"}

    def __init__(self, uid: bytes, memory: bytes):
        assert len(uid) == 7 and len(memory) % 4 == 0
        self.uid, self.memory = uid, memory
        self.version = bytes.fromhex(self.VERSIONS.get(len(memory) - 16, self.VERSIONS[144]))

    def reset(self) -> None:
        pass

    def command(self, data: bytes) -> bytes | None:
        if len(data) == 2 and data[0] == 0x30:
            start = data[1] * 4
            if start >= len(self.memory):
                return b"\x00"  # NAK: no such page
            return (self.memory + self.memory)[start:start + 16]
        if data[:1] == b"\x60":
            return self.version
        return b"\x00"


class Type4Card:
    """An ISO 14443-4A card holding the Type 4 applet of the lab's virtual PC/SC card."""
    brty = "106A"
    sens_res, sak = b"\x44\x03", 0x20
    ATS = bytes.fromhex("0578 80 A0 02".replace(" ", ""))  # FSCI 8 (256), FWI 10 (0.3 s)

    def __init__(self, uid: bytes, cc: bytes | None = None, ndef_file: bytes | None = None, *,
                 has_app: bool = True, empty_reads: bool = False):
        from lab.vcard import CardImage, Type4Applet
        files = {} if cc is None else {CC_FILE_ID: cc, NDEF_FILE_ID: ndef_file or b""}
        self.uid = uid
        self.applet = Type4Applet(CardImage(uid, has_app=has_app, files=files, empty_reads=empty_reads))
        self.active = False

    def reset(self) -> None:
        self.applet.reset()
        self.active = False

    def command(self, data: bytes) -> bytes | None:
        if data[:1] == b"\xe0":
            self.active = True
            return self.ATS
        if not self.active or not data:
            return None
        pcb = data[0]
        if pcb & 0xEE == 0x02:  # I-block, no chaining
            return bytes([pcb]) + self.applet.process(bytes(data[1:]))
        if pcb & 0xF6 == 0xB2:  # R(NAK): presence check
            return bytes([0xA2 | (pcb & 1)])
        if pcb & 0xF7 == 0xC2:  # DESELECT
            self.active = False
            return bytes([pcb])
        return None


class Type3Card:
    """A FeliCa Lite-S formatted for NDEF (system 12FC) with the NDEF service's blocks."""
    brty = "212F"
    # PMm: IC F1 (Lite-S) and a Check timeout of ~20 ms a block: generous for a Python peer.
    PMM = bytes.fromhex("00F1000000B30000")

    def __init__(self, idm: bytes, blocks: list[bytes], *, system: int = 0x12FC):
        assert len(idm) == 8 and all(len(b) == 16 for b in blocks)
        self.uid, self.blocks, self.system = idm, list(blocks), system
        self.emulation = self._emulation()

    def _emulation(self):
        import nfc.clf
        from nfc.tag.tt3 import Type3TagEmulation
        sensf_res = b"\x01" + self.uid + self.PMM + self.system.to_bytes(2, "big")
        target = nfc.clf.LocalTarget("212F", sensf_res=bytearray(sensf_res), tt3_cmd=bytearray(b"\x00"))
        emu = Type3TagEmulation(None, target)
        if self.system == 0x12FC:
            emu.add_service(0x0009, self._read_block, None)
            emu.add_service(0x000B, self._read_block, None)
        return emu

    def _read_block(self, number: int, rb: bool, re: bool):
        return bytearray(self.blocks[number]) if number < len(self.blocks) else None

    def reset(self) -> None:
        pass

    def command(self, data: bytes) -> bytes | None:
        if not data or data[0] != len(data):
            return None
        rsp = self.emulation.process_command(bytearray(data))
        return bytes(rsp) if rsp else None


class NfcSim:
    """One simulated card field on a loopback UDP port, served by a thread."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.card = None
        self.selected = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, name="nfc-sim", daemon=True)
        self.frames = 0

    @property
    def path(self) -> str:
        return f"udp:{self.host}:{self.port}"

    def start(self) -> "NfcSim":
        self.thread.start()
        return self

    def stop(self) -> None:
        try:
            self.sock.sendto(b"STOP", self.sock.getsockname())
        except OSError:
            pass
        self.thread.join(2)
        self.sock.close()

    def present(self, card) -> None:
        with self.lock:
            self.card, self.selected = card, False
            card.reset()

    def remove(self) -> None:
        with self.lock:
            self.card, self.selected = None, False

    def _serve(self) -> None:
        while True:
            try:
                datagram, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            if datagram == b"STOP" and addr == self.sock.getsockname():
                return
            self.frames += 1
            with self.lock:
                reply = self._answer(datagram)
            if reply is not None:
                try:
                    self.sock.sendto(reply, addr)
                except OSError:
                    pass

    def _answer(self, datagram: bytes) -> bytes | None:
        if datagram.startswith(RFOFF):
            if self.card is not None:
                self.card.reset()
            self.selected = False
            return None
        try:
            brty, hexdata = datagram.split()
            data = unhexlify(hexdata)
        except ValueError:
            return None
        brty = brty.decode()
        card = self.card
        # Only nfcpy's discovery polls get RFOFF: its presence checks must time out as with a
        # card that left (an RFOFF there is an error nfcpy's tag classes do not expect).
        poll = (brty, data) in SENSE_POLLS
        if card is None or card.brty != brty:
            return RFOFF if poll else None
        rsp = self._type_a(card, data) if brty == "106A" else card.command(data)
        return None if rsp is None else brty.encode() + b" " + hexlify(rsp)

    def _type_a(self, card, data: bytes) -> bytes | None:
        """ISO 14443-3A activation with a 4- or 7-byte UID; commands once selected."""
        uid = card.uid
        levels = [b"\x88" + uid[:3], uid[3:7]] if len(uid) == 7 else [uid[:4]]
        if data in (b"\x26", b"\x52"):
            card.reset()
            self.selected = False
            return card.sens_res
        for level, cmd in enumerate((0x93, 0x95)[:len(levels)]):
            part = levels[level] + bytes([reduce(xor, levels[level])])
            if data == bytes([cmd, 0x20]):
                return part
            if data == bytes([cmd, 0x70]) + part:
                last = level == len(levels) - 1
                self.selected = last
                return bytes([card.sak if last else 0x04])
        return card.command(data) if self.selected else None


def _card_from_args(args):
    import os
    from hal.card.badge_write import badge_message, type2_image, type3_blocks, type4_files
    message = badge_message(args.user, args.org)
    if args.card == "type2":
        uid = b"\x04" + os.urandom(6)
        return Type2Card(uid, type2_image(message, uid))
    if args.card == "type3":
        return Type3Card(b"\x01\x2e" + os.urandom(6), type3_blocks(message))
    if args.card == "type4":
        return Type4Card(b"\x04" + os.urandom(6), *type4_files(message))
    uid = b"\x04" + os.urandom(6)
    return Type2Card(uid, type2_image(None, uid))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.nfc_sim")
    ap.add_argument("--port", type=int, default=54321)
    ap.add_argument("--card", choices=["type2", "type3", "type4", "uid-only"], default="type2")
    ap.add_argument("--user", default="alice")
    ap.add_argument("--org", default="acme")
    args = ap.parse_args(argv)
    sim = NfcSim(args.port).start()
    sim.present(_card_from_args(args))
    print(f"holding a {args.card} card on {sim.path}; Ctrl-C to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
