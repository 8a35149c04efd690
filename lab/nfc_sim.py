"""A card on the far end of nfcpy's `udp` reader driver: tests and benches run the real
`NfcpyReader` (`udp:127.0.0.1:<port>`) with no hardware.

nfcpy's udp driver sends each frame as one datagram `"<bitrate> <hex>"` (`106A 26`, `212F 0600ffff0100`)
and takes the first answer from whoever answers. `NfcSim` binds a loopback UDP port and answers as
the card it is holding:

- `Type2Card`: ISO 14443-3A anticollision (7-byte UID, two cascade levels), then READ (`30 pp`: 16
  bytes from its memory image, wrapping), WRITE (`A2 pp`: with the NTAG's OTP and lock bits),
  GET_VERSION (`60`: an NTAG21x by size), NAK (`00`) to anything else (nfcpy's NXP probe sends `1A`
  and then selects the tag again);
- `Type4Card`: anticollision with SAK 20, RATS -> ATS, ISO-DEP I-blocks carrying APDUs to the lab's
  Type 4 applet (`lab.vcard.Type4Applet`) with UPDATE BINARY added, R(NAK) presence checks, DESELECT;
- `Type3Card`: nfcpy's own `Type3TagEmulation` answers polling and Check/Update of the NDEF service
  (000B/0009) from a block list, and the Lite-S memory configuration block (MC, 0x88).

Every card accepts writes as the real one would (`hal.card.writer` is tested against them), and
keeps what was written while it is held (`present()` again after `remove()` shows the same card).

With no card (or a card of another technology) a poll is answered `RFOFF`, which nfcpy's driver takes
as a broken link at once, instead of waiting its 1 s per technology. A removed card simply stops
answering, as a real one leaves the field. Images come from `hal.card.badge_write`.

    sim = NfcSim(); sim.start()                  # sim.path == "udp:127.0.0.1:<port>"
    sim.present(Type2Card(uid, type2_image(badge_message("alice", "acme"), uid)))
    sim.remove(); sim.stop()

`python -m lab.nfc_sim --port 54321 --card type2|type3|type4|uid-only --user alice --org acme` holds
one card until interrupted; with `--control PATH` it holds none and takes one-line JSON commands on
that unix socket instead (the lab's NFC reader, `lab tap --card type3`):

    {"cmd": "present", "card": "type2|type3|type4|uid-only", "user": "alice", "org": "acme",
     "uid_hex": "..."}        (uid_hex optional; uid-only: the card's UID, required)
    {"cmd": "remove"}    {"cmd": "status"}
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
    """An NXP Type 2 tag (NTAG21x) with a 7-byte UID and a memory image from page 0.

    The image is extended with the NTAG's pages after its data area (dynamic lock bytes and
    configuration). WRITE (`A2 pp d0..d3`) is ACKed (`0A`) or NAKed as the tag would: pages 0-1 are
    read-only, page 2's lock bytes and the CC (page 3) are one-time programmable (bits are ORed), a
    page whose static or dynamic lock bit is set refuses writes."""
    brty = "106A"
    sens_res, sak = b"\x44\x00", 0x00
    VERSIONS = {144: "0004040201000F03", 496: "0004040201001103", 872: "0004040201001303"}
    # data area -> (dynamic lock page, pages in all) of NTAG213/215/216
    LAYOUT = {144: (40, 45), 496: (130, 135), 872: (226, 231)}
    ACK, NAK = b"\x0a", b"\x00"

    def __init__(self, uid: bytes, memory: bytes):
        assert len(uid) == 7 and len(memory) % 4 == 0
        self.uid, self.data_size = uid, len(memory) - 16
        self.version = bytes.fromhex(self.VERSIONS.get(self.data_size, self.VERSIONS[144]))
        self.dynamic_lock, pages = self.LAYOUT.get(self.data_size, (None, len(memory) // 4))
        self.memory = bytearray(memory) + bytearray(max(0, pages * 4 - len(memory)))

    def reset(self) -> None:
        pass

    def command(self, data: bytes) -> bytes | None:
        if len(data) == 2 and data[0] == 0x30:
            start = data[1] * 4
            if start >= len(self.memory):
                return self.NAK  # no such page
            return bytes((self.memory + self.memory)[start:start + 16])
        if len(data) == 6 and data[0] == 0xA2:
            return self._write(data[1], data[2:])
        if data[:1] == b"\x60":
            return self.version
        return self.NAK

    def _locked(self, page: int) -> bool:
        lock0, lock1 = self.memory[10], self.memory[11]
        if 3 <= page <= 7:
            return bool(lock0 >> page & 1)
        if 8 <= page <= 15:
            return bool(lock1 >> (page - 8) & 1)
        if self.dynamic_lock is not None and 16 <= page < self.dynamic_lock:
            return any(self.memory[self.dynamic_lock * 4:self.dynamic_lock * 4 + 3])
        return False

    def _write(self, page: int, data: bytes) -> bytes:
        at = page * 4
        if page < 2 or at >= len(self.memory) or self._locked(page):
            return self.NAK
        if page == 2:  # serial and internal bytes are read-only; lock bytes OR
            self.memory[10] |= data[2]
            self.memory[11] |= data[3]
        elif page == 3 or page == self.dynamic_lock:  # one-time programmable
            for i in range(4):
                self.memory[at + i] |= data[i]
        else:
            self.memory[at:at + 4] = data
        return self.ACK


class WritableType4Applet:
    """The lab's Type 4 applet with UPDATE BINARY (`00 D6`): the NDEF file is writable while the CC's
    write-access byte is 00 (up to the CC's max NDEF file size); the CC itself only when
    `cc_writable` (its write-access byte alone, as a card that lets it be changed)."""

    def __init__(self, card, cc_writable: bool = False):
        from lab.vcard import Type4Applet
        for fid, data in card.files.items():
            card.files[fid] = bytearray(data)
        self.card, self.cc_writable = card, cc_writable
        self.applet = Type4Applet(card)

    def reset(self) -> None:
        self.applet.reset()

    def process(self, apdu: bytes) -> bytes:
        if len(apdu) >= 5 and apdu[:2] == b"\x00\xd6":
            return self._update(((apdu[2] << 8) | apdu[3]), bytes(apdu[5:5 + apdu[4]]))
        return self.applet.process(apdu)

    def _update(self, offset: int, data: bytes) -> bytes:
        from lab.vcard import SW_NO_EF, SW_WRONG_P1P2
        denied, no_room = b"\x69\x82", b"\x6a\x84"
        fid, files = self.applet.file, self.card.files
        if fid is None:
            return SW_NO_EF
        cc = files.get(CC_FILE_ID, b"")
        if fid == CC_FILE_ID:
            if not self.cc_writable or offset != 14 or len(data) != 1:
                return denied
        elif len(cc) < 15 or cc[14] != 0x00:
            return denied
        elif offset + len(data) > int.from_bytes(cc[11:13], "big"):
            return no_room
        target = files[fid]
        if offset > len(target):
            return SW_WRONG_P1P2
        target[offset:offset + len(data)] = data
        return b"\x90\x00"


class Type4Card:
    """An ISO 14443-4A card holding the Type 4 applet of the lab's virtual PC/SC card (writable
    through `WritableType4Applet`; images from `type4_files` have a read-only CC, write access FF)."""
    brty = "106A"
    sens_res, sak = b"\x44\x03", 0x20
    ATS = bytes.fromhex("0578 80 A0 02".replace(" ", ""))  # FSCI 8 (256), FWI 10 (0.3 s)

    def __init__(self, uid: bytes, cc: bytes | None = None, ndef_file: bytes | None = None, *,
                 has_app: bool = True, empty_reads: bool = False, cc_writable: bool = False):
        from lab.vcard import CardImage
        files = {} if cc is None else {CC_FILE_ID: cc, NDEF_FILE_ID: ndef_file or b""}
        self.uid = uid
        self.applet = WritableType4Applet(CardImage(uid, has_app=has_app, files=files, empty_reads=empty_reads),
                                          cc_writable)
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
    """A FeliCa Lite-S formatted for NDEF (system 12FC) with the NDEF service's blocks.

    Writes go through service 0009: S_PAD blocks 0-13 while their MC_SP bit is set, the memory
    configuration block MC (0x88) while its MC_ALL byte is FF (00 makes it read-only for good)."""
    brty = "212F"
    # PMm: IC F1 (Lite-S) and Check / Update timeouts of ~20 ms a block: generous for a Python peer.
    PMM = bytes.fromhex("00F1000000B3B300")
    S_PADS, MC = 14, 0x88

    def __init__(self, idm: bytes, blocks: list[bytes], *, system: int = 0x12FC):
        assert len(idm) == 8 and all(len(b) == 16 for b in blocks)
        self.uid, self.blocks, self.system = idm, list(blocks), system
        self.mc = bytearray.fromhex("FF7FFF01") + bytearray(12)  # every S_PAD and MC writable; NDEF on
        self.emulation = self._emulation()

    def _emulation(self):
        import nfc.clf
        from nfc.tag.tt3 import Type3TagEmulation
        sensf_res = b"\x01" + self.uid + self.PMM + self.system.to_bytes(2, "big")
        target = nfc.clf.LocalTarget("212F", sensf_res=bytearray(sensf_res), tt3_cmd=bytearray(b"\x00"))
        emu = Type3TagEmulation(None, target)
        if self.system == 0x12FC:
            emu.add_service(0x0009, self._read_block, self._write_block)
            emu.add_service(0x000B, self._read_block, None)
        return emu

    def _read_block(self, number: int, rb: bool, re: bool):
        if number == self.MC:
            return bytearray(self.mc)
        return bytearray(self.blocks[number]) if number < len(self.blocks) else None

    def _write_block(self, number: int, data: bytearray, wb: bool, we: bool) -> bool:
        if number == self.MC:
            if self.mc[2] != 0xFF:
                return False
            self.mc[:] = data
            return True
        if number >= self.S_PADS or not (int.from_bytes(self.mc[0:2], "little") >> number) & 1:
            return False
        while len(self.blocks) <= number:
            self.blocks.append(bytes(16))
        self.blocks[number] = bytes(data)
        return True

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


def card_for(kind: str, user: str | None = None, org: str | None = None, uid: bytes | None = None):
    """A simulated card of `kind` with the badge of user@org (`uid-only`: a blank NTAG with `uid`)."""
    import os
    from hal.card.badge_write import badge_message, type2_image, type3_blocks, type4_files
    if kind == "uid-only":
        uid = uid or b"\x04" + os.urandom(6)
        return Type2Card(uid, type2_image(None, uid))
    message = badge_message(user, org)
    if kind == "type2":
        uid = uid or b"\x04" + os.urandom(6)
        return Type2Card(uid, type2_image(message, uid))
    if kind == "type3":
        return Type3Card(uid or b"\x01\x2e" + os.urandom(6), type3_blocks(message))
    if kind == "type4":
        return Type4Card(uid or b"\x04" + os.urandom(6), *type4_files(message))
    raise ValueError(f"unknown card kind {kind!r}")


def serve_control(sim: "NfcSim", path: str) -> None:
    """Take present/remove/status commands on the unix socket `path` (one JSON line each), forever."""
    import json
    import os
    from pathlib import Path

    Path(path).unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)
    srv.listen(4)

    def handle(cmd: dict) -> dict:
        if cmd.get("cmd") == "present":
            uid = bytes.fromhex(cmd["uid_hex"]) if cmd.get("uid_hex") else None
            sim.present(card_for(cmd["card"], cmd.get("user"), cmd.get("org"), uid))
            return {"ok": True}
        if cmd.get("cmd") == "remove":
            sim.remove()
            return {"ok": True}
        if cmd.get("cmd") == "status":
            return {"ok": True, "path": sim.path}
        return {"ok": False, "error": "unknown command"}

    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("rwb") as f:
            for line in f:
                try:
                    reply = handle(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.nfc_sim")
    ap.add_argument("--port", type=int, default=54321)
    ap.add_argument("--control", help="a unix socket for present/remove commands (holds no card at start)")
    ap.add_argument("--card", choices=["type2", "type3", "type4", "uid-only"], default="type2")
    ap.add_argument("--user", default="alice")
    ap.add_argument("--org", default="acme")
    args = ap.parse_args(argv)
    sim = NfcSim(args.port).start()
    if args.control:
        print(f"NFC card simulator on {sim.path}, control {args.control}", flush=True)
        serve_control(sim, args.control)
        return 0
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
