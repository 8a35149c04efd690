"""The daemon's device-certificate thread (firmware/runtime.py `_keep_device_cert`) goes round
every DEVICE_CERT_EVERY_S until the daemon stops. It did not: it waited on the asyncio Event with a
timeout (a TypeError in that thread), so after its first round it was gone and the day-long
certificate was never renewed."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import firmware.device_cert as device_cert
import firmware.runtime as runtime


def test_the_certificate_is_checked_round_after_round_until_the_daemon_stops(monkeypatch):
    rounds = []
    stopping = threading.Event()

    def ensure(cfg, client, now):
        rounds.append(now)
        if len(rounds) == 3:
            stopping.set()
        return SimpleNamespace(status="valid", usable=True, reason="")

    monkeypatch.setattr(device_cert, "ensure", ensure)
    monkeypatch.setattr(runtime, "DEVICE_CERT_EVERY_S", 0.01)
    monkeypatch.setattr(runtime, "build_directory", lambda cfg: object())
    fake = SimpleNamespace(cfg=SimpleNamespace(device=SimpleNamespace(device_id="mfp-1.space-1")),
                           done=asyncio.Event(), stopping=stopping, device_cert={})
    worker = threading.Thread(target=runtime.Runtime._keep_device_cert, args=(fake,), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and len(rounds) == 3
    assert fake.device_cert == {"status": "valid", "usable": True}
