"""Grabbed evdev input devices: the plumbing shared by the keyboard-wedge card reader
(`hal.card.wedge`) and the USB PIN keypad (`hal.panel.keypad`).

- `open_input_device(device, name, keys=...)`: a device by path, by a substring of its evdev
  name, or a FIFO of recorded `struct input_event` records (a `StreamDevice`: the lab and the tests
  simulate the kernel's input layer that way).
- `InputDeviceReader`: the body of a reader thread that opens its device, grabs it exclusively
  (EVIOCGRAB: its keys never reach a console, a login prompt or the kiosk browser), serves it, and
  ungrabs and closes it; a device that is absent, busy or gone is reported and retried with a
  backoff.
- The `struct input_event` format (`INPUT_EVENT`, `input_events`) and the event codes both readers
  use (linux/input-event-codes.h).
"""

from __future__ import annotations

import logging
import os
import select
import stat
import struct
from dataclasses import dataclass
from typing import Collection, Iterator

# linux/input-event-codes.h
EV_SYN, EV_KEY = 0x00, 0x01
KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2  # an EV_KEY event's value

INPUT_EVENT = struct.Struct("llHHi")  # struct input_event: struct timeval, __u16 type, code, __s32 value

NOT_OPENED = "not opened yet"  # a reader's problem before its thread first tried the device


def input_events(data: bytes) -> Iterator[tuple[float, int, int, int]]:
    """(time, type, code, value) of each `struct input_event` in a byte stream read from evdev."""
    if len(data) % INPUT_EVENT.size:
        raise ValueError(f"{len(data)} bytes is not a whole number of {INPUT_EVENT.size}-byte input events")
    for sec, usec, ev_type, code, value in INPUT_EVENT.iter_unpack(data):
        yield sec + usec / 1e6, ev_type, code, value


def require_evdev(error: type[Exception]) -> None:
    """Raise `error` (the caller's "unavailable" type) when python-evdev cannot be imported."""
    try:
        import evdev  # noqa: F401
    except ImportError as exc:
        raise error(f"python-evdev is not usable: {exc}") from None


class StreamDevice:
    """A FIFO of recorded `struct input_event` records standing in for an evdev device, with the
    part of `evdev.InputDevice` the readers use (`fd`, `name`, `read()`, `grab()`, `ungrab()`,
    `close()`). Nothing to grab: no console reads a FIFO."""

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

    def read(self) -> list[StreamEvent]:
        """The whole records written so far (BlockingIOError when there are none, as evdev)."""
        self._buf += os.read(self.fd, 4096)
        whole = len(self._buf) - len(self._buf) % INPUT_EVENT.size
        data, self._buf = self._buf[:whole], self._buf[whole:]
        return [StreamEvent(*e) for e in input_events(data)]


@dataclass(frozen=True)
class StreamEvent:
    """One recorded event, shaped like `evdev.InputEvent` where the readers look."""
    t: float
    type: int
    code: int
    value: int

    def timestamp(self) -> float:
        return self.t


def open_input_device(device: str, name: str, keys: Collection[int] | None = None):
    """The input device at path `device` (a FIFO: a `StreamDevice` of recorded events), or else the
    first whose evdev name contains `name` and that has keys (when `keys` is given: at least one of
    them). OSError when it cannot be opened; FileNotFoundError when there is none."""
    import evdev
    if device and stat.S_ISFIFO(os.stat(device).st_mode):
        return StreamDevice(device)
    if device:
        return evdev.InputDevice(device)
    for path in evdev.list_devices():
        try:
            dev = evdev.InputDevice(path)
        except OSError:
            continue
        caps = dev.capabilities()
        if name in dev.name and EV_KEY in caps and (keys is None or set(caps[EV_KEY]) & set(keys)):
            return dev
        dev.close()
    raise FileNotFoundError(f"no input device named like {name!r}")


class InputDeviceReader:
    """The thread body of a reader of one grabbed input device.

    `_run()` loops until `_stop` is set: it opens the device (`device` or `name`, having one of
    `wanted_keys`), grabs it, reports it connected, calls `_serve(dev)`, and at the end (stop, or an
    OSError such as ENODEV: unplugged) ungrabs and closes it and calls `_after_close()`. A device
    that is absent, busy or gone is reported as `reader_state()["problem"]` (logged once per cause)
    and tried again after `retry_s`, doubling up to `retry_max_s`; a success resets the delay.

    Subclasses implement `_serve(dev)`: return when `_stop` is set, raise OSError when the device
    fails; `_wait(dev, timeout)` and `_read(dev)` do the waiting and reading, and `_wake()` (safe
    from any thread) makes a `_wait` return at once. `_close_wake()` releases the wake-up pipe once
    the thread has ended.

    The host class provides the thread and the state: `_stop` (a `threading.Event`),
    `_set_state(connected, problem)` and `reader_state()` (as `hal.card.threaded.ThreadedReader`
    does); `_log` is the logger the lines go to.
    """

    _log = logging.getLogger("tenantprint.input")
    wanted_keys: Collection[int] | None = None  # None: any device with keys

    def __init__(self, device: str, name: str, *, label: str, retry_s: float, retry_max_s: float):
        super().__init__()
        self.device, self.name, self.label = device, name, label
        self.retry_s, self.retry_max_s = retry_s, max(retry_max_s, retry_s)
        self._wake_r, self._wake_w = os.pipe()

    # -- hooks --

    def _serve(self, dev) -> None:
        raise NotImplementedError

    def _after_close(self) -> None:
        """Called in the thread after the device was ungrabbed and closed (default: nothing)."""

    # -- for `_serve` and the host --

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # closed: nobody waits any more
            pass

    def _close_wake(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wait(self, dev, timeout: float) -> bool:
        """Wait for input on `dev`, a `_wake()` or `timeout` seconds; True when `dev` has input."""
        ready, _, _ = select.select([dev.fd, self._wake_r], [], [], timeout)
        if self._wake_r in ready:
            os.read(self._wake_r, 64)
        return dev.fd in ready

    @staticmethod
    def _read(dev) -> list:
        """The events `dev` has ready (none after a spurious wake-up)."""
        try:
            return list(dev.read())
        except BlockingIOError:
            return []

    # -- the loop --

    def _note_problem(self, cause: str) -> None:
        if self.reader_state()["problem"] != cause:
            self._log.warning("%s: %s; retrying", self.label, cause)
        self._set_state(False, cause)

    def _open(self):
        """The grabbed device, or None (the state says why)."""
        try:
            dev = open_input_device(self.device, self.name, self.wanted_keys)
        except OSError as exc:
            cause = ("input device not found" if isinstance(exc, FileNotFoundError)
                     else f"cannot open input device: {exc.strerror or exc}")
            self._note_problem(cause)
            return None
        try:
            dev.grab()
        except OSError as exc:
            dev.close()
            self._note_problem(f"input device held by another program ({exc.strerror})")
            return None
        self._log.info("%s open and grabbed: %s", self.label, dev.name)
        self._set_state(True, "")
        return dev

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
                self._after_close()


__all__ = ["InputDeviceReader", "StreamDevice", "StreamEvent", "open_input_device", "input_events",
           "require_evdev", "INPUT_EVENT", "EV_SYN", "EV_KEY", "KEY_UP", "KEY_DOWN", "KEY_REPEAT", "NOT_OPENED"]
