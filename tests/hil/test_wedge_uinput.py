"""The WedgeReader end to end through the kernel's input layer: a virtual keyboard made with
python-evdev's UInput (/dev/uinput) types numbers; the reader grabs it (EVIOCGRAB) and yields a
`CardUid` for a reader's burst, nothing for a person typing.

Under tests/hil/ because it needs /dev/uinput, which the container CI runs in does not have (the
rule: in CI a missing prerequisite fails; skips are for hardware-in-the-loop tests). On a Pi or a VM
with the uinput module loaded it runs; elsewhere it is skipped with the reason."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from hal.card import CardRemoved, CardUid, open_reader

UINPUT = "/dev/uinput"


@pytest.fixture
def keyboard():
    if not os.path.exists(UINPUT):
        pytest.skip(f"no {UINPUT} on this machine (modprobe uinput on a bench that has it)")
    evdev = pytest.importorskip("evdev")
    from evdev import UInput, ecodes
    keys = [getattr(ecodes, f"KEY_{d}") for d in "0123456789"] + [ecodes.KEY_ENTER]
    name = f"tenantprint-test-wedge-{os.getpid()}"
    with UInput({ecodes.EV_KEY: keys}, name=name) as ui:
        deadline = time.monotonic() + 3
        path = None
        while path is None and time.monotonic() < deadline:
            path = next((p for p in evdev.list_devices() if evdev.InputDevice(p).name == name), None)
            time.sleep(0.05)
        assert path, "the uinput device did not appear"
        yield ui, name, path


def type_keys(ui, text: str, gap: float) -> None:
    from evdev import ecodes
    for ch in text:
        code = ecodes.KEY_ENTER if ch == "\n" else getattr(ecodes, f"KEY_{ch}")
        ui.write(ecodes.EV_KEY, code, 1)
        ui.syn()
        ui.write(ecodes.EV_KEY, code, 0)
        ui.syn()
        time.sleep(gap)


def test_a_burst_is_a_card_a_person_is_not_and_the_device_is_grabbed(keyboard):
    import evdev
    ui, name, path = keyboard

    async def scenario():
        reader = open_reader("wedge", name=name)
        events = reader.events()
        first = asyncio.create_task(anext(events))
        try:
            for _ in range(60):
                if reader.reader_state()["connected"]:
                    break
                await asyncio.sleep(0.05)
            assert reader.reader_state() == {"connected": True, "problem": ""}
            other = evdev.InputDevice(path)
            with pytest.raises(OSError):
                other.grab()  # EBUSY: the reader holds it; no console sees the keys
            other.close()
            await asyncio.to_thread(type_keys, ui, "12345678\n", 0.15)  # a person at the keyboard
            await asyncio.to_thread(type_keys, ui, "0012345678\n", 0.005)  # a reader's burst
            event = await asyncio.wait_for(first, 5)
            assert event == CardUid(b"0012345678", "wedge", reader.label)
            assert await asyncio.wait_for(anext(events), 5) == CardRemoved(reader.label)
        finally:
            first.cancel()
            await reader.close()
    asyncio.run(scenario())
