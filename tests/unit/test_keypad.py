"""hal.panel.keypad: the decoder on key events, and the reader thread fed recorded `struct
input_event` records through a FIFO (as the wedge reader's tests and the lab do: the kernel's
input layer is what is simulated; there is no keypad and no /dev/uinput here)."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from firmware.events import Pin
from hal.card.wedge import INPUT_EVENT, input_events
from hal.panel.keypad import (DIGIT_KEYS, EV_KEY, EV_SYN, KEY_BACKSPACE, KEY_DELETE, KEY_ENTER, KEY_ESC,
                              KEY_KPENTER, KEY_KPMINUS, MAX_DIGITS, EntryCancelled, EntryChanged,
                              EntrySubmitted, KeypadConfigError, KeypadDecoder, KeypadReader, keypad_events)

KP = {c: k for k, c in DIGIT_KEYS.items() if k >= 71}       # b"0"[0] -> KEY_KP0 ...
TOP = {c: k for k, c in DIGIT_KEYS.items() if k < 71}       # b"0"[0] -> KEY_0 ...
KEY_KPPLUS, KEY_KPDOT, KEY_NUMLOCK, KEY_A, KEY_HOME = 78, 83, 69, 30, 102
T0 = 1_700_000_000.0


def press(decoder: KeypadDecoder, code: int):
    """Key down then up, as a keypad sends it: the action of the key down."""
    action = decoder.feed(EV_KEY, code, 1)
    assert decoder.feed(EV_SYN, 0, 0) is None and decoder.feed(EV_KEY, code, 0) is None
    return action


def type_digits(decoder: KeypadDecoder, digits: bytes, keys: dict = KP) -> list:
    return [press(decoder, keys[d]) for d in digits]


# -- the decoder ------------------------------------------------------------------------------

def test_digits_then_enter_give_a_pin_and_the_buffer_is_zeroed():
    decoder = KeypadDecoder()
    assert type_digits(decoder, b"2468") == [EntryChanged(1), EntryChanged(2), EntryChanged(3), EntryChanged(4)]
    buf = decoder._buf
    assert bytes(buf[:4]) == b"2468"
    action = press(decoder, KEY_KPENTER)
    assert isinstance(action, EntrySubmitted) and isinstance(action.pin, Pin)
    assert action.pin.reveal() == bytearray(b"2468")
    assert decoder._buf is buf and buf == bytearray(MAX_DIGITS)  # the same buffer, all zeroes
    assert decoder.digits == 0
    assert "2468" not in repr(action) and "2468" not in str(action.pin)
    action.pin.wipe()
    assert action.pin.reveal() == bytearray()


def test_top_row_digits_and_the_main_enter_key_work_too():
    decoder = KeypadDecoder()
    type_digits(decoder, b"1357", keys=TOP)
    action = press(decoder, KEY_ENTER)
    assert action.pin.reveal() == bytearray(b"1357")
    mixed = KeypadDecoder()
    type_digits(mixed, b"90", keys=TOP)
    type_digits(mixed, b"12")
    assert press(mixed, KEY_KPENTER).pin.reveal() == bytearray(b"9012")


def test_every_digit_key_maps_to_its_digit():
    for keys in (KP, TOP):
        decoder = KeypadDecoder()
        type_digits(decoder, b"0123456789", keys=keys)
        assert press(decoder, KEY_KPENTER).pin.reveal() == bytearray(b"0123456789")


def test_backspace_deletes_the_last_digit_and_zeroes_it():
    decoder = KeypadDecoder()
    type_digits(decoder, b"247")
    assert press(decoder, KEY_BACKSPACE) == EntryChanged(2)
    assert decoder._buf[2] == 0
    type_digits(decoder, b"68")
    assert press(decoder, KEY_KPENTER).pin.reveal() == bytearray(b"2468")
    # Backspace on an empty entry changes nothing
    assert press(decoder, KEY_BACKSPACE) is None


@pytest.mark.parametrize("key", [KEY_ESC, KEY_KPMINUS, KEY_DELETE])
def test_cancel_keys_cancel_and_wipe(key):
    decoder = KeypadDecoder()
    type_digits(decoder, b"9753")
    assert press(decoder, key) == EntryCancelled()
    assert decoder._buf == bytearray(MAX_DIGITS) and decoder.digits == 0
    assert press(decoder, key) == EntryCancelled()  # also with nothing typed: the person gives up


def test_a_seventeenth_digit_clears_the_entry():
    decoder = KeypadDecoder()
    assert type_digits(decoder, b"1234567890123456")[-1] == EntryChanged(16)
    assert bytes(decoder._buf) == b"1234567890123456"
    assert press(decoder, KP[ord("7")]) == EntryChanged(0, overflow=True)
    assert decoder._buf == bytearray(MAX_DIGITS)
    type_digits(decoder, b"42")  # a fresh entry afterwards
    assert press(decoder, KEY_KPENTER).pin.reveal() == bytearray(b"42")


def test_sixteen_digits_is_a_pin():
    decoder = KeypadDecoder()
    type_digits(decoder, b"9" * 16)
    assert press(decoder, KEY_KPENTER).pin.reveal() == bytearray(b"9" * 16)


def test_key_repeat_and_key_up_are_ignored():
    decoder = KeypadDecoder()
    code = KP[ord("5")]
    assert decoder.feed(EV_KEY, code, 1) == EntryChanged(1)
    for _ in range(30):  # held down: auto-repeat
        assert decoder.feed(EV_KEY, code, 2) is None
    assert decoder.feed(EV_KEY, code, 0) is None
    assert decoder.feed(EV_KEY, KEY_KPENTER, 2) is None  # a repeating ENTER submits nothing
    assert decoder.feed(EV_KEY, KEY_KPENTER, 1).pin.reveal() == bytearray(b"5")


def test_other_keys_and_events_are_ignored():
    decoder = KeypadDecoder()
    type_digits(decoder, b"12")
    for code in (KEY_KPPLUS, KEY_KPDOT, KEY_NUMLOCK, KEY_A, KEY_HOME):
        assert press(decoder, code) is None
    assert decoder.feed(4, 4, 0x70059) is None          # EV_MSC MSC_SCAN
    assert decoder.feed(0x11, 0, 1) is None             # EV_LED NumLock
    assert decoder.digits == 2 and press(decoder, KEY_KPENTER).pin.reveal() == bytearray(b"12")


def test_a_lone_enter_sends_no_empty_pin():
    decoder = KeypadDecoder()
    assert press(decoder, KEY_KPENTER) is None and press(decoder, KEY_ENTER) is None


def test_clear_zeroes_the_entry():
    decoder = KeypadDecoder()
    type_digits(decoder, b"8642")
    assert decoder.clear() is True and decoder._buf == bytearray(MAX_DIGITS)
    assert decoder.clear() is False


def test_no_str_of_a_digit_is_made():
    """The digits live as ints in a bytearray: the decoder's tables hold no digit strings."""
    assert all(isinstance(v, int) for v in DIGIT_KEYS.values())
    decoder = KeypadDecoder()
    type_digits(decoder, b"3141")
    assert not [o for o in vars(decoder).values() if isinstance(o, str)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([EV_SYN, EV_KEY, 4]),
                          st.sampled_from([*DIGIT_KEYS, KEY_KPENTER, KEY_ENTER, KEY_BACKSPACE, KEY_ESC,
                                           KEY_KPMINUS, KEY_DELETE, KEY_KPPLUS, KEY_A, 0]),
                          st.integers(0, 2)), max_size=80))
def test_any_events_give_only_pins_of_1_to_16_digits_and_leave_no_digit_behind(events):
    decoder = KeypadDecoder()
    for ev in events:
        action = decoder.feed(*ev)
        assert decoder.digits <= MAX_DIGITS
        assert bytes(decoder._buf[decoder.digits:]) == bytes(MAX_DIGITS - decoder.digits)
        if isinstance(action, EntrySubmitted):
            digits = action.pin.reveal()
            assert 1 <= len(digits) <= MAX_DIGITS and digits.isdigit()
            assert decoder._buf == bytearray(MAX_DIGITS)


def test_recorded_keypad_events_are_struct_input_event():
    data = keypad_events(b"12\n", T0, gap_s=0.1)
    events = list(input_events(data))
    assert len(data) == 12 * INPUT_EVENT.size
    assert [e[1:] for e in events[:4]] == [(EV_KEY, KP[ord("1")], 1), (EV_SYN, 0, 0), (EV_KEY, KP[ord("1")], 0),
                                           (EV_SYN, 0, 0)]
    assert events[-4][1:] == (EV_KEY, KEY_KPENTER, 1)
    assert events[4][0] == pytest.approx(T0 + 0.1, abs=1e-5)
    decoder = KeypadDecoder()
    actions = [a for e in events if (a := decoder.feed(*e[1:])) is not None]
    assert actions[:2] == [EntryChanged(1), EntryChanged(2)] and actions[2].pin.reveal() == bytearray(b"12")


# -- the reader, fed from a FIFO ---------------------------------------------------------------

class Firmware:
    """The callbacks, recording what the reader hands over (the PIN's digits copied out as bytes
    for the asserts, the Pin wiped as the firmware does)."""

    def __init__(self):
        self.pins: list[bytes] = []
        self.got: list[Pin] = []
        self.cancels = 0
        self.activity: list[int] = []
        self.event = threading.Event()

    def on_pin(self, pin: Pin) -> None:
        self.pins.append(bytes(pin.reveal()))
        self.got.append(pin)
        pin.wipe()
        self.event.set()

    def on_cancel(self) -> None:
        self.cancels += 1
        self.event.set()

    def on_activity(self, digits: int) -> None:
        self.activity.append(digits)
        self.event.set()

    def wait(self, condition, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "the reader did not call back in time"
            self.event.wait(0.05)
            self.event.clear()


@pytest.fixture
def fifo(tmp_path):
    pytest.importorskip("evdev")
    path = tmp_path / "keypad.fifo"
    os.mkfifo(path, 0o600)
    return path


def write(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when no reader has it open
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def reader_for(path, fw: Firmware, **options) -> KeypadReader:
    return KeypadReader(str(path), fw.on_pin, fw.on_cancel, fw.on_activity, **options)


def wait_connected(reader: KeypadReader, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not reader.reader_state()["connected"]:
        assert time.monotonic() < deadline, reader.reader_state()
        time.sleep(0.02)


def test_reader_hands_over_a_pin_typed_on_the_keypad(fifo, caplog):
    caplog.set_level(logging.DEBUG, logger="tenantprint.panel.keypad")
    fw = Firmware()
    reader = reader_for(fifo, fw).start()
    try:
        wait_connected(reader)
        write(fifo, keypad_events(b"2478\b6\n", time.time(), gap_s=0.01))  # a slip corrected
        fw.wait(lambda: fw.pins)
        assert fw.pins == [b"2476"] and fw.got[0].reveal() == bytearray()
        assert fw.activity == [1, 2, 3, 4, 3, 4]
        write(fifo, keypad_events(b"13\x1b", time.time(), gap_s=0.01))
        fw.wait(lambda: fw.cancels)
        assert fw.cancels == 1 and fw.activity[-2:] == [1, 2]
        assert reader._decoder._buf == bytearray(MAX_DIGITS)
    finally:
        reader.stop()
    assert reader._thread is not None and not reader._thread.is_alive()
    text = caplog.text
    assert "PIN entered" in text and "cancelled" in text
    assert "2476" not in text and "2478" not in text


def test_reader_without_its_device_says_why_and_picks_it_up_when_it_appears(tmp_path):
    pytest.importorskip("evdev")
    path = tmp_path / "later.fifo"
    fw = Firmware()
    reader = reader_for(path, fw, retry_s=0.02, retry_max_s=0.05)
    assert reader.reader_state() == {"connected": False, "problem": "not opened yet"}
    reader.start()
    try:
        deadline = time.monotonic() + 3
        while reader.reader_state()["problem"] != "input device not found":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.mkfifo(path, 0o600)  # plugged in
        wait_connected(reader)
        write(path, keypad_events(b"99\n", time.time(), gap_s=0.01))
        fw.wait(lambda: fw.pins)
        assert fw.pins == [b"99"]
    finally:
        reader.stop()


def test_clear_and_idle_wipe_a_half_typed_entry(fifo):
    fw = Firmware()
    reader = reader_for(fifo, fw, idle_clear_s=0.3).start()
    try:
        wait_connected(reader)
        write(fifo, keypad_events(b"55", time.time(), gap_s=0.01))
        fw.wait(lambda: fw.activity == [1, 2])
        reader.clear()  # a PIN prompt starts: earlier keys are not part of the PIN
        write(fifo, keypad_events(b"7\n", time.time(), gap_s=0.01))
        fw.wait(lambda: fw.pins)
        assert fw.pins == [b"7"]
        write(fifo, keypad_events(b"123", time.time(), gap_s=0.01))  # then nobody presses ENTER
        fw.wait(lambda: fw.activity[-1:] == [0] and len(fw.activity) > 4)
        assert fw.activity[-4:] == [1, 2, 3, 0]
        assert reader._decoder.digits == 0 and reader._decoder._buf == bytearray(MAX_DIGITS)
    finally:
        reader.stop()


def test_a_failing_callback_does_not_end_pin_entry_and_its_pin_is_wiped(fifo):
    kept: list[Pin] = []
    fw = Firmware()

    def on_pin(pin: Pin) -> None:
        kept.append(pin)
        raise RuntimeError("the firmware's bug")

    reader = KeypadReader(str(fifo), on_pin, fw.on_cancel, fw.on_activity).start()
    try:
        wait_connected(reader)
        write(fifo, keypad_events(b"31\n-", time.time(), gap_s=0.01))
        fw.wait(lambda: fw.cancels)  # still reading after the failure
        assert len(kept) == 1 and kept[0].reveal() == bytearray()
        assert reader.reader_state()["connected"]
    finally:
        reader.stop()


def test_stop_is_prompt_and_idempotent(fifo):
    reader = reader_for(fifo, Firmware()).start()
    wait_connected(reader)
    started = time.monotonic()
    reader.stop()
    reader.stop()
    assert time.monotonic() - started < 1.0


def test_options_are_checked():
    pytest.importorskip("evdev")
    fw = Firmware()
    with pytest.raises(KeypadConfigError):
        KeypadReader("", fw.on_pin, fw.on_cancel, fw.on_activity)
    with pytest.raises(ValueError):  # a KeypadConfigError is a ValueError
        KeypadReader("/dev/input/event9", fw.on_pin, fw.on_cancel, fw.on_activity, idle_clear_s=0)
