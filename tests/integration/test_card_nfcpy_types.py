"""The real NfcpyReader end to end through nfcpy's `udp` driver, against lab/nfc_sim.py on the
other end: Type 2, 3 and 4 badges, cards known by their UID only, malformed cards, a reader whose
peer appears late. No hardware; loopback UDP only."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from prereq import need

from hal.card import (KIND_TYPE2, KIND_TYPE3, KIND_TYPE4, BadAttributeBlock, BadCapabilityContainer,
                      BadgeMalformed, BadgeTooLong, CardRemoved, CardTap, CardUid, CardUnreadable,
                      NoUid, ReaderUnavailable, mask_uid, open_reader)
from hal.card.badge import MIME_TYPE, mime_record
from hal.card.badge_write import (attribute_block, badge_message, type2_cc, type2_header, type2_image,
                                  type3_blocks, type4_files)
from hal.card.threaded import ThreadedReader

try:
    import nfc  # noqa: F401
    from lab.nfc_sim import NfcSim, Type2Card, Type3Card, Type4Card
except ImportError:  # pragma: no cover - the venv has nfcpy
    NfcSim = None

UID7 = bytes.fromhex("04a1b2c3d4e5f6")
IDM = bytes.fromhex("012e4cf1a2b3c4d5")
EVENT_TIMEOUT_S = 5.0
ALICE = badge_message("alice", "acme")


@pytest.fixture
def sim():
    need(NfcSim is not None, "nfcpy installed in the venv")
    s = NfcSim().start()
    yield s
    s.stop()


class Watch:
    """An NfcpyReader on `path` whose events are pumped into a queue."""

    def __init__(self, path: str, **options):
        self.reader = open_reader("nfcpy", path=path, **options)
        self.queue: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self):
        async def pump():
            async for event in self.reader.events():
                await self.queue.put((time.monotonic(), event))
        self.task = asyncio.create_task(pump())
        return self

    async def __aexit__(self, *exc):
        await self.reader.close()
        await asyncio.wait_for(self.task, 8)

    async def next(self, timeout: float = EVENT_TIMEOUT_S):
        return (await asyncio.wait_for(self.queue.get(), timeout))[1]

    async def tap(self, sim, card):
        """Present `card`, return its event, remove it and see the removal."""
        sim.present(card)
        event = await self.next()
        sim.remove()
        assert await self.next() == CardRemoved(self.reader.path)
        return event


def run(coro):
    return asyncio.run(coro)


def _type2(message=ALICE, **kw):
    return Type2Card(UID7, type2_image(message, UID7, **kw))


def _type2_raw(cc: bytes, data: bytes, size: int = 144):
    return Type2Card(UID7, type2_header(UID7) + cc + data + bytes(size - len(data)))


def _type3(blocks):
    return Type3Card(IDM, blocks)


def test_a_badge_on_each_tag_type_is_a_tap_of_that_kind(sim):
    async def scenario():
        async with Watch(sim.path) as w:
            cards = [(_type2(), KIND_TYPE2, UID7), (_type3(type3_blocks(ALICE)), KIND_TYPE3, IDM),
                     (Type4Card(UID7, *type4_files(ALICE)), KIND_TYPE4, UID7)]
            for card, kind, uid in cards:
                event = await w.tap(sim, card)
                assert event == CardTap(uid, "alice", "acme", sim.path), kind
                assert event.kind == kind and event.detected_at > 0
            assert w.reader.reader_state() == {"connected": True, "problem": ""}
    run(scenario())


def test_cards_without_a_badge_are_known_by_their_uid(sim):
    other_ndef = mime_record(b"text/plain", b"hello")
    cards = [
        ("blank NTAG", Type2Card(UID7, type2_image(None, UID7)), KIND_TYPE2, UID7),
        ("NTAG with an empty NDEF TLV", _type2_raw(type2_cc(144), b"\x03\x00\xfe"), KIND_TYPE2, UID7),
        ("NTAG with a text record", _type2(other_ndef), KIND_TYPE2, UID7),
        ("FeliCa Standard (no NDEF system)", Type3Card(IDM, [], system=0x8008), KIND_TYPE3, IDM),
        ("FeliCa Lite-S with Ln 0", _type3([attribute_block(0, nmaxb=13)]), KIND_TYPE3, IDM),
        ("ISO-DEP card without NDEF app", Type4Card(UID7, has_app=False), KIND_TYPE4, UID7),
    ]

    async def scenario():
        async with Watch(sim.path) as w:
            for name, card, kind, uid in cards:
                event = await w.tap(sim, card)
                assert event == CardUid(uid, kind, sim.path), name
                assert mask_uid(uid) in repr(event) and uid.hex() not in repr(event)
            # a random UID (08 ...) is no identity: unreadable
            event = await w.tap(sim, Type4Card(bytes.fromhex("08123456"), has_app=False))
            assert isinstance(event, CardUnreadable) and isinstance(event.error, NoUid)
    run(scenario())


def test_malformed_cards_are_unreadable_with_the_right_error(sim):
    good_block0 = attribute_block(len(ALICE), nmaxb=13)
    bad_sum = good_block0[:14] + bytes([good_block0[14] ^ 1, good_block0[15]])
    cards = [
        ("Type 2 CC version 2", _type2_raw(b"\xe1\x20\x12\x00", b"\x03\x05hello\xfe"), BadCapabilityContainer),
        ("Type 2 NDEF TLV past the data area", _type2_raw(type2_cc(144), b"\x03\xff\x01\x00" + ALICE),
         BadgeTooLong),
        ("Type 2 NDEF TLV over the badge limit",
         _type2_raw(type2_cc(2040), b"\x03\xff\x02\x58" + ALICE, 2040), BadgeTooLong),
        ("Type 2 bad JSON", _type2(mime_record(MIME_TYPE, b'{"v":1,')), BadgeMalformed),
        ("Type 2 unknown TLV", _type2_raw(type2_cc(144), b"\x07\x01\x00\x03"), BadgeMalformed),
        ("Type 3 checksum", _type3([bad_sum] + type3_blocks(ALICE)[1:]), BadAttributeBlock),
        ("Type 3 Ln past Nmaxb", _type3([attribute_block(400, nmaxb=13)] + type3_blocks(ALICE)[1:]),
         BadgeTooLong),
        ("Type 3 blocks missing", _type3(type3_blocks(ALICE)[:2]), BadgeMalformed),
        ("Type 4 empty reads", Type4Card(UID7, *type4_files(ALICE), empty_reads=True), BadgeMalformed),
    ]

    async def scenario():
        wrong = []
        async with Watch(sim.path) as w:
            for name, card, error in cards:
                event = await w.tap(sim, card)
                if not (isinstance(event, CardUnreadable) and isinstance(event.error, error)):
                    wrong.append(f"{name}: expected {error.__name__}, got {event!r}")
            assert (await w.tap(sim, _type2())).user_id == "alice"  # and the reader still works
        assert not wrong, "\n".join(wrong)
    run(scenario())


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reader_whose_udp_peer_comes_late_works_within_5_s():
    need(NfcSim is not None, "nfcpy installed in the venv")
    port = _free_udp_port()

    async def scenario():
        late = None
        try:
            async with Watch(f"udp:127.0.0.1:{port}") as w:
                await asyncio.sleep(1.0)
                assert w.reader.reader_state() == {"connected": False, "problem": "udp peer absent"}
                assert w.queue.empty()
                late = NfcSim(port).start()
                late.present(_type2())
                t0 = time.monotonic()
                event = await w.next(5.0)
                assert isinstance(event, CardTap) and event.user_id == "alice"
                assert time.monotonic() - t0 < 5.0
                assert w.reader.reader_state()["connected"]
                late.remove()
                assert isinstance(await w.next(), CardRemoved)
        finally:
            if late is not None:
                late.stop()
    run(scenario())


def test_reader_without_its_device_keeps_trying_and_says_why():
    need(NfcSim is not None, "nfcpy installed in the venv")

    async def scenario():
        async with Watch("usb:ffff:fff0", retry_s=0.05, retry_max_s=0.2) as w:
            await asyncio.sleep(0.5)
            state = w.reader.reader_state()
            assert not state["connected"] and state["problem"] == "no NFC reader plugged in"
            assert not w.task.done()  # no ReaderUnavailable: it retries
    run(scenario())


# -- pure parts: the open-failure diagnosis and the reader's re-iteration ---------------------

def _fake_sysfs(root, driver: str | None):
    dev = root / "1-1"
    dev.mkdir()
    (dev / "idVendor").write_text("072f\n")
    (dev / "idProduct").write_text("2200\n")
    intf = root / "1-1:1.0"
    intf.mkdir()
    if driver:
        target = root / "drivers" / driver
        target.mkdir(parents=True)
        (intf / "driver").symlink_to(target)


@pytest.mark.parametrize("driver, pcscd, want", [
    ("pn533_usb", False, "kernel driver pn533_usb bound"),
    ("port100", False, "kernel driver port100 bound"),
    ("usbfs", True, "held by pcscd"),
    ("usbfs", False, "held by another program"),
])
def test_open_failure_names_what_holds_the_reader(tmp_path, driver, pcscd, want):
    from hal.card.nfc_diagnose import problem
    sysfs = tmp_path / "sys"
    sysfs.mkdir()
    _fake_sysfs(sysfs, driver)
    sock = tmp_path / "pcscd.comm"
    if pcscd:
        sock.write_text("")
    for path in ("usb", "usb:072f", "usb:072f:2200"):
        assert problem(path, OSError(19, os.strerror(19)), sysfs=sysfs, pcscd_socket=sock) == want


def test_open_failure_without_a_reader(tmp_path):
    from hal.card.nfc_diagnose import problem
    assert problem("usb", OSError(19, "x"), sysfs=tmp_path) == "no NFC reader plugged in"
    assert problem("tty:USB0:pn532", OSError(19, "x")) == "no NFC reader found"


class Flaky(ThreadedReader):
    """Fails on its first run, then yields one event per run."""

    def __init__(self):
        super().__init__()
        self.runs = 0

    def _run(self):
        self.runs += 1
        if self.runs == 1:
            raise ReaderUnavailable("device gone")
        self._set_state(True, "")
        self._emit(CardRemoved("flaky"))
        self._stop.wait(5)


def test_events_may_be_iterated_again_after_a_failure():
    async def scenario():
        reader = Flaky()
        with pytest.raises(ReaderUnavailable):
            async for _ in reader.events():
                pass
        assert reader.reader_state() == {"connected": False, "problem": "device gone"}
        async for event in reader.events():
            assert event == CardRemoved("flaky")
            break
        assert reader.reader_state()["connected"]
        await reader.close()
    run(scenario())
