"""Keyboard-wedge card readers (125 kHz Prox/EM4100, iCLASS readers that type the card number).

Such a reader is a USB keyboard: it "types" the number and ENTER. `WedgeReader` opens it through
evdev and grabs it exclusively (EVIOCGRAB), so its keystrokes never reach a console or login prompt,
and hands each key event to `WedgeDecoder`, a pure decoder with strict validation:

- only digits (top row or keypad), and hex A-F when `hex_digits` is set; Shift is ignored;
- between `min_len` and `max_len` characters, ENTER (or keypad ENTER) ends the number;
- at most `max_gap_s` between two key presses (a reader types a number in a burst; a person at the
  keyboard is refused), and a key repeat is refused;
- a number without ENTER is dropped once the keyboard was idle for `idle_reset_s`.

A number that fails is dropped with a reason (`WedgeRejected`; the reason never holds the number).
A valid one becomes `CardUid(uid=<the number's ASCII bytes>, kind="wedge", reader=...)` followed
by `CardRemoved` (a wedge reader says nothing when the card leaves). The ASCII bytes keep leading
zeros and are the same for decimal and hex numbers.

The device is chosen by config: `device` (a path, best a stable `/dev/input/by-id/...-event-kbd`)
or `name` (a substring of the evdev device name). A device that is absent or goes away is retried
with a backoff; `reader_state()` says why it is not connected. The firmware's unit allows
`char-input` read access for this (DeviceAllow=char-input r); evdev then opens it read-only.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import struct
import time
from dataclasses import dataclass
from typing import Iterator, Union

from hal.card import CardRemoved, CardUid, ReaderUnavailable, mask_uid
from hal.card.threaded import ThreadedReader

log = logging.getLogger("tenantprint.card.wedge")

KIND_WEDGE = "wedge"

# linux/input-event-codes.h
EV_KEY = 0x01
KEY_ENTER, KEY_KPENTER, KEY_LEFTSHIFT, KEY_RIGHTSHIFT = 28, 96, 42, 54
DIGIT_KEYS = {2: "1", 3: "2", 4: "3", 5: "4", 6: "5", 7: "6", 8: "7", 9: "8", 10: "9", 11: "0",
              79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9", 82: "0"}
HEX_KEYS = {30: "A", 48: "B", 46: "C", 32: "D", 18: "E", 33: "F"}
KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2

INPUT_EVENT = struct.Struct("llHHi")  # struct input_event: struct timeval, __u16 type, code, __s32 value


@dataclass(frozen=True)
class WedgeConfig:
    min_len: int = 4
    max_len: int = 20
    max_gap_s: float = 0.050
    idle_reset_s: float = 1.0
    hex_digits: bool = False

    def __post_init__(self):
        if not 1 <= self.min_len <= self.max_len <= 64:
            raise ValueError(f"wedge lengths must satisfy 1 <= min_len <= max_len <= 64 "
                             f"(got {self.min_len}, {self.max_len})")
        if not 0 < self.max_gap_s < self.idle_reset_s:
            raise ValueError("wedge timing must satisfy 0 < max_gap_s < idle_reset_s")


@dataclass(frozen=True)
class WedgeNumber:
    number: str

    def __repr__(self) -> str:
        return f"WedgeNumber({mask_uid(self.number.encode())})"


@dataclass(frozen=True)
class WedgeRejected:
    reason: str


WedgeResult = Union[WedgeNumber, WedgeRejected]


class WedgeDecoder:
    """Key events in, numbers (or rejections) out; no I/O. Times are seconds on any one clock."""

    def __init__(self, config: WedgeConfig = WedgeConfig()):
        self.config = config
        self._chars: list[str] = []
        self._fault = ""
        self._last = 0.0
        self._pending = False  # a sequence has started and not ended

    def _reset(self) -> None:
        self._chars, self._fault, self._pending = [], "", False

    def _taint(self, reason: str) -> None:
        if not self._fault:
            self._fault = reason

    def expire(self, now: float) -> WedgeRejected | None:
        """Drop a sequence that got no ENTER within `idle_reset_s` of its last key."""
        if self._pending and now - self._last > self.config.idle_reset_s:
            reason = self._fault or f"no ENTER after {len(self._chars)} characters"
            self._reset()
            return WedgeRejected(reason)
        return None

    def feed(self, t: float, ev_type: int, code: int, value: int) -> WedgeResult | None:
        """One input event; a result when a sequence ends (ENTER, or a new burst after idle)."""
        if ev_type != EV_KEY or value == KEY_UP or code in (KEY_LEFTSHIFT, KEY_RIGHTSHIFT):
            return None
        dropped = self.expire(t)
        if self._pending:
            gap = t - self._last
            if gap > self.config.max_gap_s:
                self._taint(f"keys {gap * 1000:.0f} ms apart (max {self.config.max_gap_s * 1000:.0f} ms): "
                            "typed by hand?")
        self._last = t
        if value == KEY_REPEAT:
            self._pending = True
            self._taint("a key repeated (held down)")
            return dropped
        if code in (KEY_ENTER, KEY_KPENTER):
            return self._end() or dropped
        self._pending = True
        char = DIGIT_KEYS.get(code) or (HEX_KEYS.get(code) if self.config.hex_digits else None)
        if char is None:
            self._taint(f"key code {code} is not a {'hex ' if self.config.hex_digits else ''}digit")
        elif len(self._chars) >= self.config.max_len:
            self._taint(f"longer than {self.config.max_len} characters")
        else:
            self._chars.append(char)
        return dropped

    def _end(self) -> WedgeResult | None:
        if not self._pending:
            return None  # a lone ENTER
        chars, fault = "".join(self._chars), self._fault
        self._reset()
        if fault:
            return WedgeRejected(fault)
        if len(chars) < self.config.min_len:
            return WedgeRejected(f"{len(chars)} characters, fewer than {self.config.min_len}")
        return WedgeNumber(chars)


def input_events(data: bytes) -> Iterator[tuple[float, int, int, int]]:
    """(time, type, code, value) of each `struct input_event` in a byte stream read from evdev."""
    if len(data) % INPUT_EVENT.size:
        raise ValueError(f"{len(data)} bytes is not a whole number of {INPUT_EVENT.size}-byte input events")
    for sec, usec, ev_type, code, value in INPUT_EVENT.iter_unpack(data):
        yield sec + usec / 1e6, ev_type, code, value


def wedge_events(number: str, start: float, gap_s: float = 0.002) -> bytes:
    """Pure: the `struct input_event` records a wedge reader makes typing `number` (digits, A-F) and
    ENTER, a key every `gap_s` from `start` (each a key down and up, as a keyboard sends them)."""
    codes = {c: k for k, c in DIGIT_KEYS.items() if k < 20} | {c: k for k, c in HEX_KEYS.items()}
    out, t = bytearray(), start
    for key in [codes[c] for c in number.upper()] + [KEY_ENTER]:
        sec, usec = int(t), int((t % 1) * 1e6)
        out += INPUT_EVENT.pack(sec, usec, EV_KEY, key, KEY_DOWN) + INPUT_EVENT.pack(sec, usec, EV_KEY, key, KEY_UP)
        t += gap_s
    return bytes(out)


class _StreamDevice:
    """A FIFO of recorded `struct input_event` records standing in for an evdev device (the lab: the
    kernel's input layer is what is simulated). Nothing to grab: no console reads a FIFO."""

    def __init__(self, path: str):
        # read-write: the FIFO never shows end-of-file while no writer has it open
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.name, self._buf = f"recorded input ({path})", b""

    def grab(self) -> None:
        pass

    def ungrab(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.fd)

    def read(self):
        self._buf += os.read(self.fd, 4096)
        whole = len(self._buf) - len(self._buf) % INPUT_EVENT.size
        data, self._buf = self._buf[:whole], self._buf[whole:]
        return [_StreamEvent(*e) for e in input_events(data)]


@dataclass(frozen=True)
class _StreamEvent:
    t: float
    type: int
    code: int
    value: int

    def timestamp(self) -> float:
        return self.t


def decode_stream(data: bytes, config: WedgeConfig = WedgeConfig(), *, end: float | None = None) -> list[WedgeResult]:
    """Every result of a recorded stream; `end` (a time after the stream) expires a pending one."""
    decoder, out = WedgeDecoder(config), []
    for event in input_events(data):
        result = decoder.feed(*event)
        if result is not None:
            out.append(result)
    if end is not None and (result := decoder.expire(end)) is not None:
        out.append(result)
    return out


# -- the reader -------------------------------------------------------------------------------

class WedgeReader(ThreadedReader):
    """Options: `device` (input device path) or `name` (substring of its evdev name), `hex_digits`,
    `min_len`, `max_len`, `max_gap_ms`, `idle_reset_ms`, `retry_s` / `retry_max_s` (backoff while the
    device is absent)."""

    def __init__(self, device: str = "", name: str = "", hex_digits: bool = False, min_len: int = 4,
                 max_len: int = 20, max_gap_ms: float = 50, idle_reset_ms: float = 1000,
                 retry_s: float = 0.2, retry_max_s: float = 2.0):
        super().__init__()
        try:
            import evdev  # noqa: F401
        except ImportError as exc:
            raise ReaderUnavailable(f"python-evdev is not usable: {exc}") from None
        if not device and not name:
            raise ValueError("a wedge reader needs `device` (a path) or `name` (part of its name)")
        self.device, self.name = device, name
        self.config = WedgeConfig(min_len, max_len, max_gap_ms / 1000, idle_reset_ms / 1000, hex_digits)
        self.retry_s, self.retry_max_s = retry_s, max(retry_max_s, retry_s)
        self.label = f"wedge:{device or name}"
        self._wake_r, self._wake_w = os.pipe()
        self._set_state(False, "not opened yet")

    def _wake(self) -> None:
        os.write(self._wake_w, b"x")

    async def close(self) -> None:
        await super().close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _find(self):
        import evdev
        if self.device and stat.S_ISFIFO(os.stat(self.device).st_mode):
            return _StreamDevice(self.device)
        if self.device:
            return evdev.InputDevice(self.device)
        for path in evdev.list_devices():
            try:
                dev = evdev.InputDevice(path)
            except OSError:
                continue
            if self.name in dev.name and evdev.ecodes.EV_KEY in dev.capabilities():
                return dev
            dev.close()
        raise FileNotFoundError(f"no input device named like {self.name!r}")

    def _open(self):
        """The grabbed device, or None (the state says why)."""
        try:
            dev = self._find()
        except OSError as exc:
            cause = "input device not found" if isinstance(exc, FileNotFoundError) else f"cannot open input device: {exc}"
            self._note_problem(cause)
            return None
        try:
            dev.grab()
        except OSError as exc:
            dev.close()
            self._note_problem(f"input device held by another program ({exc.strerror})")
            return None
        log.info("wedge reader %s open and grabbed: %s", self.label, dev.name)
        self._set_state(True, "")
        return dev

    def _note_problem(self, cause: str) -> None:
        if self.reader_state()["problem"] != cause:
            log.warning("wedge reader %s: %s; retrying", self.label, cause)
        self._set_state(False, cause)

    def _run(self) -> None:
        delay = self.retry_s
        while not self._stop.is_set():
            dev = self._open()
            if dev is None:
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = self.retry_s
            try:
                self._serve(dev)
            except OSError as exc:  # unplugged: ENODEV
                self._note_problem(f"input device gone ({exc.strerror})")
            finally:
                try:
                    dev.ungrab()
                except OSError:
                    pass
                dev.close()

    def _serve(self, dev) -> None:
        decoder = WedgeDecoder(self.config)
        while not self._stop.is_set():
            ready, _, _ = select.select([dev.fd, self._wake_r], [], [], self.config.idle_reset_s / 2)
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if dev.fd in ready:
                try:
                    events = list(dev.read())
                except BlockingIOError:
                    events = []
                for ev in events:
                    self._handle(decoder.feed(ev.timestamp(), ev.type, ev.code, ev.value))
            self._handle(decoder.expire(time.time()))  # evdev stamps events with CLOCK_REALTIME

    def _handle(self, result: WedgeResult | None) -> None:
        if isinstance(result, WedgeRejected):
            log.warning("wedge reader %s: input dropped: %s", self.label, result.reason)
        elif isinstance(result, WedgeNumber):
            uid = result.number.encode("ascii")
            log.info("card on %s: wedge number %s", self.label, mask_uid(uid))
            self._emit(CardUid(uid, KIND_WEDGE, self.label, detected_at=time.monotonic()))
            self._emit(CardRemoved(self.label))

