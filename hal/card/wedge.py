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
with a backoff; `reader_state()` says why it is not connected (the opening, grabbing and retrying is
`hal.input_device.InputDeviceReader`'s). The firmware's unit allows `char-input` read access for
this (DeviceAllow=char-input r); evdev then opens it read-only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Union

from hal.card import CardRemoved, CardUid, ReaderUnavailable, mask_uid
from hal.card.threaded import ThreadedReader
from hal.input_device import (EV_KEY, INPUT_EVENT, KEY_DOWN, KEY_REPEAT, KEY_UP, NOT_OPENED, InputDeviceReader,
                              input_events, require_evdev)

log = logging.getLogger("tenantprint.card.wedge")

KIND_WEDGE = "wedge"

# linux/input-event-codes.h (EV_KEY, KEY_UP/DOWN/REPEAT and the input_event format: hal.input_device)
KEY_ENTER, KEY_KPENTER, KEY_LEFTSHIFT, KEY_RIGHTSHIFT = 28, 96, 42, 54
DIGIT_KEYS = {2: "1", 3: "2", 4: "3", 5: "4", 6: "5", 7: "6", 8: "7", 9: "8", 10: "9", 11: "0",
              79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9", 82: "0"}
HEX_KEYS = {30: "A", 48: "B", 46: "C", 32: "D", 18: "E", 33: "F"}


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

class WedgeReader(InputDeviceReader, ThreadedReader):
    """Options: `device` (input device path) or `name` (substring of its evdev name), `hex_digits`,
    `min_len`, `max_len`, `max_gap_ms`, `idle_reset_ms`, `retry_s` / `retry_max_s` (backoff while the
    device is absent)."""

    _log = log

    def __init__(self, device: str = "", name: str = "", hex_digits: bool = False, min_len: int = 4,
                 max_len: int = 20, max_gap_ms: float = 50, idle_reset_ms: float = 1000,
                 retry_s: float = 0.2, retry_max_s: float = 2.0):
        require_evdev(ReaderUnavailable)
        if not device and not name:
            raise ValueError("a wedge reader needs `device` (a path) or `name` (part of its name)")
        self.config = WedgeConfig(min_len, max_len, max_gap_ms / 1000, idle_reset_ms / 1000, hex_digits)
        super().__init__(device, name, label=f"wedge:{device or name}", retry_s=retry_s, retry_max_s=retry_max_s)
        self._set_state(False, NOT_OPENED)

    async def close(self) -> None:
        await super().close()
        self._close_wake()

    def _serve(self, dev) -> None:
        decoder = WedgeDecoder(self.config)
        while not self._stop.is_set():
            if self._wait(dev, self.config.idle_reset_s / 2):
                for ev in self._read(dev):
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
