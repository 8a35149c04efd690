"""The clock gate (hal/clock, firmware/device_machine.py `ClockChecked`): while the clock is not
synchronised to network time no session opens, and the panel, the status and the journal say so;
once it is, taps serve. Pure logic here; tests/lab/test_clock_gate.py runs it on the real daemon."""

from __future__ import annotations

from dataclasses import replace

import pytest

from firmware import device_machine as dm
from firmware import machine as m
from firmware.config import ConfigError, FirmwareConfig, _apply
from firmware.effects import Audit
from firmware.events import Boot, CardTapped, CardUnreadable, ClockChecked, PurgeDone, Tick
from firmware.screen import Facts, Shown, screen_of
from hal import clock
from test_device_machine import audits, booted, core, keys, run, serve


def test_the_kernels_answer_is_judged_like_timedatectl():
    assert clock.judge(0, 0, 1000)                              # TIME_OK, synced, small error
    assert not clock.judge(clock.TIME_ERROR, 0, 1000)          # the kernel says unsynchronised
    assert not clock.judge(0, clock.STA_UNSYNC, 1000)          # STA_UNSYNC set
    assert not clock.judge(0, 0, clock.MAX_ERROR_US)           # too large an error
    assert not clock.judge(0, 0, -1)


def test_timesyncds_flag_says_synchronised_and_without_it_the_kernel_decides(tmp_path, monkeypatch):
    flag = tmp_path / "synchronized"
    monkeypatch.setattr(clock, "kernel_synchronised", lambda: False)
    assert clock.synchronised(str(flag)) is False
    flag.touch()
    assert clock.synchronised(str(flag)) is True
    flag.unlink()

    def refused():
        raise clock.ClockError("adjtimex: Operation not permitted")  # the unit's seccomp filter
    monkeypatch.setattr(clock, "kernel_synchronised", refused)
    assert clock.synchronised(str(flag)) is False


def test_the_kernel_can_be_asked_here():
    assert clock.kernel_synchronised() in (True, False)


def test_no_tap_opens_a_session_until_the_clock_is_synchronised():
    device, effects = run(dm.initial(), ClockChecked(0.0, False), Boot(0.1), PurgeDone(0.5, 0, True))
    assert not device.clock_synced and audits(effects)[0] == "clock"
    device, effects = run(device, CardTapped(1.0, "alice", "acme"))
    assert device.sessions == () and core(effects) == []
    assert keys(effects) == ["clock-unsynchronised"]
    assert [e.fields for e in effects if isinstance(e, Audit)] == [{"org": "acme", "reason": "clock-unsynchronised"}]
    # a card known by its UID is not looked up either (the runtime posts it unread): same line
    device, effects = run(device, CardUnreadable(1.5, "unknown-card"))
    assert keys(effects) == ["clock-unsynchronised"]
    device, effects = run(device, Tick(2.0), ClockChecked(3.0, True))
    assert device.clock_synced and keys(effects) == ["idle"]
    assert [e.fields for e in effects if isinstance(e, Audit)] == [{"synchronised": True}]
    device, effects = run(device, CardTapped(4.0, "alice", "acme"))
    assert len(device.sessions) == 1 and isinstance(device.sessions[0], m.LookingUp)


def test_the_same_answer_again_changes_nothing_and_a_session_keeps_its_panel():
    device, n = serve(booted(), "acme", "alice", 1.0)
    assert run(device, ClockChecked(2.0, True)) == (device, [])
    device, effects = run(device, ClockChecked(3.0, False))
    assert not device.clock_synced and keys(effects) == []  # the open session's screen stays
    assert isinstance(dm.session_of(device, n), m.Ready)    # and it goes on
    device, effects = run(device, CardTapped(4.0, "grace", "globex"))
    assert len(device.sessions) == 1 and keys(effects) == ["clock-unsynchronised"]


def test_a_malformed_answer_counts_as_not_synchronised():
    device, _ = run(booted(), ClockChecked(1.0, "yes"))
    assert not device.clock_synced


def test_the_idle_screen_says_the_clock_is_not_synchronised():
    facts = Facts(limits=m.Limits(pin_timeout_s=30.0, panel_return_s=30.0))
    doc = screen_of(m.Idle(0), Shown("idle", (), 0.0), 100.0, replace(facts, clock_synced=False))
    assert doc["screen"] == "out-of-service" and doc["line"]["key"] == "clock-unsynchronised"
    assert screen_of(m.Idle(0), Shown("idle", (), 0.0), 100.0, facts)["screen"] == "idle"


def test_the_clock_section_is_validated():
    cfg = FirmwareConfig()
    assert cfg.clock.require_sync is True
    _apply(cfg, {"clock": {"require_sync": False, "check_every_s": 2}}, "test")
    assert cfg.clock.require_sync is False and cfg.clock.check_every_s == 2
    for bad in ({"clock": {"require_sync": "no"}}, {"clock": {"check_every_s": 0}}, {"clock": {"ntp": "x"}}):
        with pytest.raises(ConfigError):
            _apply(FirmwareConfig(), bad, "test")


def test_the_line_has_a_text_of_its_own():
    from firmware import panel
    assert panel.text("clock-unsynchronised") == "Clock not synchronised — waiting for network time"
