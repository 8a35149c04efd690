"""`tenantprint firmware check` (firmware/self_check.py): every check says something, a required one
failing fails the report (and the exit code), a missing bench part does not."""

from __future__ import annotations

import json
import subprocess
import sys

from firmware import self_check
from firmware.config import FirmwareConfig


def test_the_report_names_every_check_and_fails_only_on_required_ones(monkeypatch):
    monkeypatch.setattr(self_check, "engine", lambda cfg: self_check._check("printer", False, "none", required=False))
    report = self_check.run_checks(FirmwareConfig())
    assert [c["name"] for c in report["checks"]] == ["programs", "units", "tunnel", "enrolment", "clock",
                                                     "reader", "printer"]
    assert all(c["detail"] for c in report["checks"])
    assert report["ok"] == all(c["ok"] for c in report["checks"] if c["required"])
    monkeypatch.setattr(self_check, "programs", lambda: self_check._check("programs", False, "missing: nft"))
    assert self_check.run_checks(FirmwareConfig())["ok"] is False


def test_a_kernel_backend_on_a_kernel_without_esp_is_a_required_failure(monkeypatch):
    import hal.tunnel

    cfg = FirmwareConfig()
    cfg.tunnel.backend = "kernel"
    monkeypatch.setattr(hal.tunnel, "detect_backend", lambda netns=None: "libipsec")
    check = self_check.tunnel(cfg)
    assert check["required"] and not check["ok"] and "ESP" in check["detail"]
    monkeypatch.setattr(hal.tunnel, "detect_backend", lambda netns=None: "kernel")
    assert self_check.tunnel(cfg)["ok"]


def test_the_command_prints_json_and_its_exit_code_says_ok(tmp_path):
    conf = tmp_path / "firmware.toml"
    conf.write_text(f'[device]\nstate_dir = "{tmp_path}"\n[printer]\nengine_uri = "ipp://192.0.2.1/ipp/print"\n')
    proc = subprocess.run([sys.executable, "-m", "tenantprint", "firmware", "--config", str(conf), "check"],
                          capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["ok"] else 1)
    assert {"name": "printer", "ok": True, "required": False,
            "detail": "configured: ipp://192.0.2.1/ipp/print"} in report["checks"]
