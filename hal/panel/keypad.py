"""A USB numeric keypad for PIN entry on a device without a touchscreen.

The keypad is read through evdev and grabbed (EVIOCGRAB), exactly like a keyboard-wedge card
reader (`hal.card.wedge`): its keys never reach a console, a login prompt or the kiosk browser.
`KeypadDecoder` turns key events into actions with no I/O; `KeypadReader` is the thread that opens
the device, feeds the decoder and calls the firmware back.

Keys (linux/input-event-codes.h), key-down only; a key held down (auto-repeat, value 2) counts once:

- digits: KEY_KP0..KEY_KP9 and the top row KEY_0..KEY_9. Both, because keypads differ: most send
  keypad codes, some (and every full keyboard someone plugs in instead) send top-row codes.
- submit: KEY_KPENTER (the tall key every keypad has) and KEY_ENTER.
- delete the last digit: KEY_BACKSPACE (the "<-" key of 19- to 22-key keypads): a person who
  mistyped corrects one digit, as on a phone.
- cancel (the person gives up the PIN; the firmware goes back from the PIN screen):
  KEY_ESC, where the keypad has an Esc key (22-key pads, every keyboard): cancel's usual key;
  KEY_KPMINUS, because the smallest 17-key pads have neither Esc nor Backspace, yet all have "-",
  top right, away from the digits, the "no" beside the "+"; KEY_DELETE, which pads with a Del key
  send, and which the "." key sends on pads whose NumLock is off: Delete removes the whole entry
  where Backspace removes one digit, the distinction every keyboard already makes.
- everything else is ignored: "+" is not submit (it sits beside Enter; a slip must not send a
  PIN), "." "/" "*" NumLock and Tab do nothing. With the pad's own NumLock off, some pads send
  navigation keys (Home, End, arrows) for the digits: those are ignored too, so nothing half-typed
  is ever sent; switch NumLock on.

The digits live in one fixed 16-byte `bytearray` (the panel API takes 1..16 digits), never in a
`str` and never in a buffer that grows (a grown bytearray leaves its old copy in freed memory). It
is zeroed after a submit, a cancel, a 17th digit (overflow clears the entry: somebody is mashing
keys), `clear()`, an idle entry and a lost device. Submit copies the digits into a
`firmware.events.Pin` and zeroes the decoder's copy before the Pin is handed on; whoever receives
the Pin owns it and wipes it once handed to the secret keeper. No digit is ever logged; nor is the
number of digits.

Devices are chosen, grabbed and retried as for the wedge reader (both are `hal.input_device`'s):
`device` (a path, best the stable `/dev/input/by-id/usb-...-event-kbd`) or `name` (a substring of
the evdev device name). A FIFO as `device` is read as recorded `struct input_event` records (the
lab, and the tests: see `keypad_events`). An absent or lost device is retried with a backoff;
`reader_state()` says why it is not connected. It runs inside the firmware (its unit allows
`char-input r`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Union

from firmware.events import Pin
from hal import input_device
from hal.input_device import (EV_KEY, EV_SYN, INPUT_EVENT, KEY_DOWN, KEY_UP, NOT_OPENED, InputDeviceReader,
                              require_evdev)

log = logging.getLogger("tenantprint.panel.keypad")

MAX_DIGITS = 16  # the panel API's and the control socket's longest PIN (firmware.status.MAX_PIN)

# linux/input-event-codes.h (EV_SYN, EV_KEY and the input_event format: hal.input_device)
KEY_ESC, KEY_BACKSPACE, KEY_ENTER, KEY_KPMINUS, KEY_KPENTER, KEY_DELETE = 1, 14, 28, 74, 96, 111
# key code -> the ASCII digit's byte value (an int: no str of a digit is ever made)
DIGIT_KEYS = {2: 0x31, 3: 0x32, 4: 0x33, 5: 0x34, 6: 0x35, 7: 0x36, 8: 0x37, 9: 0x38, 10: 0x39, 11: 0x30,
              79: 0x31, 80: 0x32, 81: 0x33, 75: 0x34, 76: 0x35, 77: 0x36, 71: 0x37, 72: 0x38, 73: 0x39,
              82: 0x30}
SUBMIT_KEYS = frozenset({KEY_KPENTER, KEY_ENTER})
DELETE_KEYS = frozenset({KEY_BACKSPACE})
CANCEL_KEYS = frozenset({KEY_ESC, KEY_KPMINUS, KEY_DELETE})


# -- errors -----------------------------------------------------------------------------------

class KeypadError(Exception):
    """The keypad cannot be used as configured."""


class KeypadUnavailable(KeypadError):
    """Permanent: python-evdev is missing. (A device that is absent, busy or gone is a state that
    `reader_state()` reports while the reader retries; a failed reader thread says so there too.)"""


class KeypadConfigError(KeypadError, ValueError):
    """The options are wrong (no device and no name, bad timings)."""


# -- the decoder ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EntryChanged:
    """A digit was typed or deleted, or the entry was cleared: `digits` is how many it holds now
    (what a masked field shows). `overflow`: cleared because a 17th digit was typed."""
    digits: int
    overflow: bool = False


@dataclass(frozen=True)
class EntrySubmitted:
    """ENTER with at least one digit: the PIN, now owned by whoever takes this action."""
    pin: Pin


@dataclass(frozen=True)
class EntryCancelled:
    """A cancel key: the person gives up the PIN (the entry is already wiped)."""


KeypadAction = Union[EntryChanged, EntrySubmitted, EntryCancelled]


class KeypadDecoder:
    """Key events in, actions out; no I/O, no clock. See the module docstring for the keys."""

    def __init__(self) -> None:
        self._buf = bytearray(MAX_DIGITS)  # never resized: see the module docstring
        self._len = 0

    @property
    def digits(self) -> int:
        """How many digits the entry holds."""
        return self._len

    def clear(self) -> bool:
        """Zero the entry; True when it held digits."""
        had = self._len > 0
        for i in range(MAX_DIGITS):
            self._buf[i] = 0
        self._len = 0
        return had

    def feed(self, ev_type: int, code: int, value: int) -> KeypadAction | None:
        """One input event; an action when it changed something."""
        if ev_type != EV_KEY or value != KEY_DOWN:
            return None  # key up, auto-repeat, SYN, MSC_SCAN, LEDs
        digit = DIGIT_KEYS.get(code)
        if digit is not None:
            if self._len == MAX_DIGITS:
                self.clear()
                return EntryChanged(0, overflow=True)
            self._buf[self._len] = digit
            self._len += 1
            return EntryChanged(self._len)
        if code in SUBMIT_KEYS:
            if not self._len:
                return None  # a lone ENTER sends no empty PIN
            with memoryview(self._buf) as view:
                pin = Pin(view[:self._len])  # copied straight from the buffer, no bytes in between
            self.clear()
            return EntrySubmitted(pin)
        if code in DELETE_KEYS:
            if not self._len:
                return None
            self._len -= 1
            self._buf[self._len] = 0
            return EntryChanged(self._len)
        if code in CANCEL_KEYS:
            self.clear()
            return EntryCancelled()
        return None


def keypad_events(keys: bytes | bytearray, start: float, gap_s: float = 0.08) -> bytes:
    """Pure: the `struct input_event` records a USB keypad sends for `keys`, one key every `gap_s`
    from `start` (down, SYN, up, SYN). Keys: b"0".."9" (keypad digits), b"\\n" (keypad ENTER),
    b"\\b" (Backspace), b"\\x1b" (Esc), b"-" (keypad minus). For the lab and the tests."""
    codes = {v: k for k, v in DIGIT_KEYS.items() if k >= 71}
    codes |= {0x0A: KEY_KPENTER, 0x08: KEY_BACKSPACE, 0x1B: KEY_ESC, 0x2D: KEY_KPMINUS}
    out, t = bytearray(), start
    for byte in keys:
        sec, usec = int(t), int((t % 1) * 1e6)
        for value in (KEY_DOWN, KEY_UP):
            out += INPUT_EVENT.pack(sec, usec, EV_KEY, codes[byte], value)
            out += INPUT_EVENT.pack(sec, usec, EV_SYN, 0, 0)
        t += gap_s
    return bytes(out)


# -- the reader -------------------------------------------------------------------------------

PinCallback = Callable[[Pin], None]


def open_input_device(device: str, name: str):
    """The input device at `device` (a FIFO: recorded events), or the first whose evdev name
    contains `name` and that has digit keys. OSError (FileNotFoundError: none) when there is none."""
    return input_device.open_input_device(device, name, DIGIT_KEYS.keys())


class KeypadReader(InputDeviceReader):
    """Reads a keypad in a thread of its own and calls back, from that thread:

    - `on_pin(pin)`: ENTER after 1..16 digits. The callee owns the `Pin` and wipes it once handed
      on (a callback that raises gets it wiped here).
    - `on_cancel()`: a cancel key.
    - `on_activity(digits)`: the entry changed; `digits` is how many it holds (0 after a
      Backspace of the last one, an overflow, an idle clear or a lost device).

    A callback must return quickly (hand over to the event loop: `loop.call_soon_threadsafe`).
    Call `clear()` when a PIN prompt starts and when it ends, so that keys typed before it are
    not part of the PIN; an entry idle for `idle_clear_s` is cleared by itself.

    Options: `device` (path or FIFO) or `name` (substring of the evdev name), `idle_clear_s`,
    `retry_s` / `retry_max_s` (backoff while the device is absent). `start()`, `stop()`."""

    join_timeout_s = 3.0
    _log = log
    wanted_keys = DIGIT_KEYS.keys()

    def __init__(self, device: str, on_pin: PinCallback, on_cancel: Callable[[], None],
                 on_activity: Callable[[int], None], *, name: str = "", idle_clear_s: float = 30.0,
                 retry_s: float = 0.2, retry_max_s: float = 2.0):
        require_evdev(KeypadUnavailable)
        if not device and not name:
            raise KeypadConfigError("a keypad needs `device` (a path) or `name` (part of its name)")
        if not (idle_clear_s > 0 and 0 < retry_s):
            raise KeypadConfigError("keypad timings must be positive")
        self.idle_clear_s = idle_clear_s
        self._on_pin, self._on_cancel, self._on_activity = on_pin, on_cancel, on_activity
        self._decoder = KeypadDecoder()  # touched by the reader thread only
        self._stop = threading.Event()
        self._clear = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._state = {"connected": False, "problem": NOT_OPENED}
        super().__init__(device, name, label=f"keypad:{device or name}", retry_s=retry_s, retry_max_s=retry_max_s)

    # -- the firmware's side --

    def start(self) -> KeypadReader:
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("a keypad reader starts once (make a new one after stop())")
        self._thread = threading.Thread(target=self._guarded_run, name="KeypadReader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread (within `join_timeout_s`), release the device, wipe a partial entry."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(self.join_timeout_s)
        if self._thread is None or not self._thread.is_alive():
            self._decoder.clear()
            self._close_wake()

    def clear(self) -> None:
        """Wipe the digits typed so far (thread-safe; no callback)."""
        self._clear.set()
        self._wake()

    def reader_state(self) -> dict:
        """{"connected": bool, "problem": why not, or ""}."""
        with self._state_lock:
            return dict(self._state)

    # -- the thread --

    def _set_state(self, connected: bool, problem: str) -> None:
        with self._state_lock:
            self._state = {"connected": connected, "problem": problem}

    def _guarded_run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug or a broken library: permanent (the message names no key)
            log.error("%s: reader thread failed: %s", self.label, type(exc).__name__)
            self._set_state(False, f"keypad reader failed: {type(exc).__name__}")
        finally:
            self._decoder.clear()

    def _after_close(self) -> None:
        if self._decoder.clear():
            self._call(self._on_activity, 0)

    def _serve(self, dev) -> None:
        last_key = time.monotonic()
        tick = min(0.5, self.idle_clear_s / 2)
        while not self._stop.is_set():
            readable = self._wait(dev, tick)
            if self._clear.is_set():
                self._clear.clear()
                self._decoder.clear()
            if readable:
                for ev in self._read(dev):
                    action = self._decoder.feed(ev.type, ev.code, ev.value)
                    if action is not None:
                        last_key = time.monotonic()
                        self._dispatch(action)
            if self._decoder.digits and time.monotonic() - last_key > self.idle_clear_s:
                self._decoder.clear()
                log.info("%s: an unfinished PIN entry was cleared after %.0f s idle", self.label, self.idle_clear_s)
                self._call(self._on_activity, 0)

    def _dispatch(self, action: KeypadAction) -> None:
        if isinstance(action, EntrySubmitted):
            log.info("%s: PIN entered", self.label)
            if not self._call(self._on_pin, action.pin):
                action.pin.wipe()
        elif isinstance(action, EntryCancelled):
            log.info("%s: PIN entry cancelled", self.label)
            self._call(self._on_cancel)
        else:
            if action.overflow:
                log.warning("%s: more than %d digits typed: entry cleared", self.label, MAX_DIGITS)
            self._call(self._on_activity, action.digits)

    def _call(self, callback, *args) -> bool:
        try:
            callback(*args)
            return True
        except Exception as exc:  # the firmware's bug must not end PIN entry; its message is not logged
            log.error("%s: %s callback failed: %s", self.label, getattr(callback, "__name__", "a"),
                      type(exc).__name__)
            return False


__all__ = ["KeypadDecoder", "KeypadReader", "KeypadAction", "EntryChanged", "EntrySubmitted", "EntryCancelled",
           "KeypadError", "KeypadUnavailable", "KeypadConfigError", "keypad_events", "open_input_device",
           "MAX_DIGITS"]
