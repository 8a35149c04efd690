"""The engine model's freshness (firmware/devices.py): on a device booted less than an hour ago the
monotonic clock is small, and "never built" must not look fresh (it did: no model was ever built,
and every session's cupsd, which cannot reach the engine from its sandbox, failed)."""

from __future__ import annotations

import firmware.devices as devices_mod
from firmware.devices import ENGINE_MODEL_MAX_AGE_S, Devices


def _devices() -> Devices:
    return Devices(config=None, card=None, backend="libipsec", firewall=None, sandboxes=None)


def test_no_model_is_never_fresh_even_just_after_boot(monkeypatch):
    monkeypatch.setattr(devices_mod.time, "monotonic", lambda: 120.0)  # up for two minutes
    d = _devices()
    assert d.engine_model is None and d.model_fresh() is False


def test_a_model_is_fresh_for_its_maximum_age_only(monkeypatch):
    now = [120.0]
    monkeypatch.setattr(devices_mod.time, "monotonic", lambda: now[0])
    d = _devices()
    d.engine_model, d.engine_model_at = b"*PPD-Adobe: \"4.3\"\n", now[0]
    assert d.model_fresh() is True
    now[0] += ENGINE_MODEL_MAX_AGE_S + 1
    assert d.model_fresh() is False
    d.forget_engine_model()
    now[0] = 5.0
    assert d.model_fresh() is False
