"""hal.input_device: the recorded-input stand-in for an evdev device, and the open/grab/serve/retry
loop both input readers (wedge, keypad) run, driven through a FIFO (or a busy stand-in device)."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from hal import input_device
from hal.card.threaded import ThreadedReader
from hal.input_device import (EV_KEY, INPUT_EVENT, KEY_DOWN, NOT_OPENED, InputDeviceReader, StreamDevice,
                              input_events, open_input_device)


def record(t: float, code: int) -> bytes:
    return INPUT_EVENT.pack(int(t), int((t % 1) * 1e6), EV_KEY, code, KEY_DOWN)


def test_input_events_parse_whole_records_and_refuse_a_torn_one():
    data = record(10.25, 2) + record(11.5, 3)
    assert list(input_events(data)) == [(10.25, EV_KEY, 2, KEY_DOWN), (11.5, EV_KEY, 3, KEY_DOWN)]
    with pytest.raises(ValueError):
        list(input_events(data[:-1]))


def test_a_fifo_is_a_stream_device_that_keeps_a_partial_record_for_later(tmp_path):
    pytest.importorskip("evdev")
    path = tmp_path / "in.fifo"
    os.mkfifo(path, 0o600)
    dev = open_input_device(str(path), "")
    try:
        assert isinstance(dev, StreamDevice) and str(path) in dev.name
        with pytest.raises(BlockingIOError):  # nothing written yet, as evdev says it
            dev.read()
        writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        data = record(1.0, 2) + record(2.0, 3)
        os.write(writer, data[:INPUT_EVENT.size + 5])
        assert [(e.timestamp(), e.code) for e in dev.read()] == [(1.0, 2)]
        os.write(writer, data[INPUT_EVENT.size + 5:])
        assert [(e.timestamp(), e.code) for e in dev.read()] == [(2.0, 3)]
        os.close(writer)
    finally:
        dev.close()


def test_an_absent_device_is_not_found(tmp_path):
    pytest.importorskip("evdev")
    with pytest.raises(FileNotFoundError):
        open_input_device(str(tmp_path / "absent"), "")


class Host(InputDeviceReader, ThreadedReader):
    """The wedge reader's shape without its decoder (ThreadedReader has the stop event and the
    state); the loop is run in a thread of the test's own. Records what the loop did."""

    def __init__(self, device: str, fail_serve: int = 0):
        super().__init__(device, "", label="test:input", retry_s=0.01, retry_max_s=0.02)
        self._set_state(False, NOT_OPENED)
        self.fail_serve, self.served, self.closed_after = fail_serve, 0, 0

    def _serve(self, dev) -> None:
        self.served += 1
        if self.served <= self.fail_serve:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        while not self._stop.is_set():
            self._wait(dev, 5.0)  # only a _wake() ends this wait in time

    def _after_close(self) -> None:
        self.closed_after += 1


def run(host: Host) -> threading.Thread:
    thread = threading.Thread(target=host._run, daemon=True)
    thread.start()
    return thread


def until(condition, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def stop(host: Host, thread: threading.Thread) -> None:
    host._stop.set()
    host._wake()
    thread.join(1.0)
    assert not thread.is_alive(), "a _wake() did not end the wait"
    host._close_wake()
    host._close_wake()  # twice is harmless
    host._wake()  # and so is a late wake-up


def test_the_loop_reports_an_absent_device_then_serves_it_when_it_appears(tmp_path, caplog):
    pytest.importorskip("evdev")
    path = tmp_path / "later.fifo"
    host = Host(str(path))
    thread = run(host)
    try:
        until(lambda: host.reader_state()["problem"] == "input device not found")
        time.sleep(0.1)  # several retries: still one warning
        assert caplog.text.count("input device not found; retrying") == 1
        os.mkfifo(path, 0o600)
        until(lambda: host.reader_state() == {"connected": True, "problem": ""})
    finally:
        stop(host, thread)
    assert host.served == 1 and host.closed_after == 1


def test_a_device_gone_while_served_is_closed_reported_and_opened_again(tmp_path):
    pytest.importorskip("evdev")
    path = tmp_path / "in.fifo"
    os.mkfifo(path, 0o600)
    host = Host(str(path), fail_serve=1)
    problems = []
    set_state = host._set_state
    host._set_state = lambda connected, problem: (problems.append(problem), set_state(connected, problem))
    thread = run(host)
    try:
        until(lambda: host.served == 2 and host.reader_state()["connected"])
    finally:
        stop(host, thread)
    assert problems[:3] == ["", f"input device gone ({os.strerror(errno.ENODEV)})", ""]
    assert host.closed_after == 2


def test_a_device_held_by_another_program_is_closed_and_retried(monkeypatch, tmp_path):
    closed = []

    class Busy:
        name = "busy"

        def grab(self):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

        def close(self):
            closed.append(True)

    monkeypatch.setattr(input_device, "open_input_device", lambda device, name, keys: Busy())
    host = Host(str(tmp_path / "any"))
    thread = run(host)
    try:
        until(lambda: len(closed) >= 2)
        assert host.reader_state() == {"connected": False,
                                       "problem": f"input device held by another program ({os.strerror(errno.EBUSY)})"}
    finally:
        stop(host, thread)
    assert host.served == 0 and host.closed_after == 0
