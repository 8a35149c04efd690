"""hal.card.wedge: the keyboard-wedge decoder on recorded evdev byte streams (`struct input_event`
as read from /dev/input/eventN: timeval, type, code, value), written here by hand the way a USB
keyboard reports keys (MSC_SCAN, KEY down, SYN, KEY up, SYN)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings, strategies as st

from hal.card import open_reader
from hal.card.wedge import (INPUT_EVENT, KEY_ENTER, KEY_KPENTER, KEY_LEFTSHIFT, WedgeConfig, WedgeDecoder,
                            WedgeNumber, WedgeRejected, decode_stream, input_events)

EV_SYN, EV_KEY, EV_MSC = 0, 1, 4
TOP_ROW = {"1": 2, "2": 3, "3": 4, "4": 5, "5": 6, "6": 7, "7": 8, "8": 9, "9": 10, "0": 11,
           "A": 30, "B": 48, "C": 46, "D": 32, "E": 18, "F": 33, "G": 34}
KEYPAD = {"0": 82, "1": 79, "2": 80, "3": 81, "4": 75, "5": 76, "6": 77, "7": 71, "8": 72, "9": 73}
T0 = 1_700_000_000.0

# 3 ms of a real-looking recording: "1" pressed and released (usb keyboard, 64-bit struct timeval).
ONE_KEY = bytes.fromhex(
    "00f1536500000000" "1027000000000000040004001e000700"  # EV_MSC MSC_SCAN 0x7001e
    "00f1536500000000" "10270000000000000100020001000000"  # EV_KEY KEY_1 down
    "00f1536500000000" "10270000000000000000000000000000"  # EV_SYN
    "00f1536500000000" "f82a0000000000000100020000000000"  # EV_KEY KEY_1 up
    "00f1536500000000" "f82a0000000000000000000000000000")  # EV_SYN


def event(t: float, ev_type: int, code: int, value: int) -> bytes:
    sec = int(t)
    return INPUT_EVENT.pack(sec, round((t - sec) * 1e6), ev_type, code, value)


def key(t: float, code: int, hold: float = 0.002) -> bytes:
    return (event(t, EV_MSC, 4, 0x70000 + code) + event(t, EV_KEY, code, 1) + event(t, EV_SYN, 0, 0)
            + event(t + hold, EV_KEY, code, 0) + event(t + hold, EV_SYN, 0, 0))


def typed(text: str, *, gap: float = 0.008, start: float = T0, enter: int | None = KEY_ENTER,
          keys: dict = TOP_ROW) -> bytes:
    """A recording of `text` typed with `gap` seconds between key presses, then ENTER."""
    out = b"".join(key(start + i * gap, keys[c]) for i, c in enumerate(text))
    if enter is not None:
        out += key(start + len(text) * gap, enter)
    return out


def end_of(data: bytes) -> float:
    return max(t for t, *_ in input_events(data))


def test_the_hand_written_recording_is_struct_input_event():
    assert INPUT_EVENT.size == 24
    events = list(input_events(ONE_KEY))
    assert [e[1:] for e in events] == [(EV_MSC, 4, 0x7001E), (EV_KEY, 2, 1), (EV_SYN, 0, 0), (EV_KEY, 2, 0),
                                       (EV_SYN, 0, 0)]
    assert events[3][0] - events[1][0] == pytest.approx(0.001, abs=1e-6)
    assert typed("1", enter=None)[:48] == event(T0, EV_MSC, 4, 0x70002) + event(T0, EV_KEY, 2, 1)
    with pytest.raises(ValueError):
        list(input_events(ONE_KEY[:-1]))


def test_a_reader_typing_a_number_and_enter_is_a_number():
    assert decode_stream(typed("0012345678")) == [WedgeNumber("0012345678")]
    assert decode_stream(typed("98765", keys=KEYPAD, enter=KEY_KPENTER)) == [WedgeNumber("98765")]
    # two cards one after the other
    two = typed("11112222") + typed("33334444", start=T0 + 3)
    assert decode_stream(two) == [WedgeNumber("11112222"), WedgeNumber("33334444")]


def test_a_person_typing_is_refused():
    [result] = decode_stream(typed("12345678", gap=0.150))
    assert isinstance(result, WedgeRejected) and "typed by hand" in result.reason
    # one slow key in a fast burst is enough; so is a slow ENTER
    burst = typed("1234", enter=None) + typed("5678", start=T0 + 0.032 + 0.2)
    assert isinstance(decode_stream(burst)[0], WedgeRejected)
    slow_enter = typed("12345678", enter=None) + key(T0 + 0.4, KEY_ENTER)
    assert isinstance(decode_stream(slow_enter)[0], WedgeRejected)


def test_lengths_outside_the_bounds_are_refused():
    [long] = decode_stream(typed("1" * 25))
    assert long == WedgeRejected("longer than 20 characters")
    [short] = decode_stream(typed("123"))
    assert short == WedgeRejected("3 characters, fewer than 4")
    assert decode_stream(typed("1" * 20)) == [WedgeNumber("1" * 20)]
    cfg = WedgeConfig(min_len=8, max_len=10)
    assert isinstance(decode_stream(typed("1234567"), cfg)[0], WedgeRejected)
    assert isinstance(decode_stream(typed("12345678901"), cfg)[0], WedgeRejected)


def test_letters_are_refused_unless_hex_is_configured():
    [result] = decode_stream(typed("12AB34"))
    assert isinstance(result, WedgeRejected) and "not a digit" in result.reason
    hex_cfg = WedgeConfig(hex_digits=True)
    assert decode_stream(typed("12AB34"), hex_cfg) == [WedgeNumber("12AB34")]
    [result] = decode_stream(typed("12G456"), hex_cfg)
    assert isinstance(result, WedgeRejected) and "not a hex digit" in result.reason
    # Shift (a reader typing upper-case hex) is ignored
    shifted = (key(T0, TOP_ROW["1"]) + event(T0 + 0.004, EV_KEY, KEY_LEFTSHIFT, 1) + key(T0 + 0.008, 30)
               + event(T0 + 0.012, EV_KEY, KEY_LEFTSHIFT, 0) + typed("234", start=T0 + 0.016))
    assert decode_stream(shifted, hex_cfg) == [WedgeNumber("1A234")]


def test_a_number_without_enter_is_dropped():
    data = typed("123456", enter=None)
    assert decode_stream(data) == []
    [dropped] = decode_stream(data, end=end_of(data) + 1.5)
    assert dropped == WedgeRejected("no ENTER after 6 characters")
    # the next card's burst, seconds later, is read on its own
    both = data + typed("99998888", start=T0 + 5)
    assert decode_stream(both) == [WedgeRejected("no ENTER after 6 characters"), WedgeNumber("99998888")]


def test_a_held_key_is_refused_and_the_decoder_recovers():
    held = (event(T0, EV_KEY, 2, 1) + event(T0 + 0.25, EV_KEY, 2, 2) + event(T0 + 0.28, EV_KEY, 2, 2)
            + event(T0 + 0.3, EV_KEY, 2, 0) + key(T0 + 0.31, KEY_ENTER))
    assert isinstance(decode_stream(held)[0], WedgeRejected)
    garbage_then_card = typed("12x", keys={**TOP_ROW, "x": 57}) + typed("55556666", start=T0 + 0.05)
    results = decode_stream(garbage_then_card)
    assert isinstance(results[0], WedgeRejected) and results[1] == WedgeNumber("55556666")


def test_a_lone_enter_is_nothing():
    assert decode_stream(key(T0, KEY_ENTER) + key(T0 + 0.01, KEY_ENTER)) == []


def test_rejections_never_carry_the_number():
    number = "73194628"
    for data, cfg in ((typed(number, gap=0.2), WedgeConfig()), (typed(number + "A"), WedgeConfig()),
                      (typed(number), WedgeConfig(max_len=6))):
        [result] = decode_stream(data, cfg)
        assert isinstance(result, WedgeRejected) and number not in result.reason and number[:6] not in result.reason
    assert number not in repr(WedgeNumber(number))


@settings(max_examples=60, deadline=None)
@given(st.text("0123456789", min_size=4, max_size=20), st.floats(0.001, 0.049))
def test_any_number_in_bounds_typed_fast_is_read_back(number, gap):
    assert decode_stream(typed(number, gap=gap)) == [WedgeNumber(number)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([EV_SYN, EV_KEY, EV_MSC]), st.integers(0, 120), st.integers(0, 2),
                          st.floats(0, 2)), max_size=60))
def test_arbitrary_events_give_only_bounded_numbers(events):
    decoder, t = WedgeDecoder(), T0
    for ev_type, code, value, dt in events:
        t += dt
        result = decoder.feed(t, ev_type, code, value)
        if isinstance(result, WedgeNumber):
            assert 4 <= len(result.number) <= 20 and result.number.isdigit()


def test_config_is_validated():
    for bad in ({"min_len": 0}, {"min_len": 10, "max_len": 5}, {"max_len": 100}, {"max_gap_s": 0},
                {"max_gap_s": 2.0, "idle_reset_s": 1.0}):
        with pytest.raises(ValueError):
            WedgeConfig(**bad)


def test_reader_without_its_device_says_why_and_keeps_trying():
    pytest.importorskip("evdev")
    with pytest.raises(ValueError):
        open_reader("wedge")

    async def scenario():
        reader = open_reader("wedge", device="/nonexistent/event-kbd", retry_s=0.05, retry_max_s=0.1)
        assert reader.reader_state() == {"connected": False, "problem": "not opened yet"}
        task = asyncio.create_task(anext(reader.events(), None))
        await asyncio.sleep(0.3)
        state = reader.reader_state()
        await reader.close()
        assert await asyncio.wait_for(task, 3) is None
        return state
    state = asyncio.run(scenario())
    assert state == {"connected": False, "problem": "input device not found"}
