"""`tenantprint lab up|status|down` through the real CLI: idempotent up, JSON status, nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from prereq import need_binary, need_root

PREFIX = "tplc"


def _lab(*args: str) -> dict:
    env = dict(os.environ, TP_LAB_PREFIX=PREFIX)
    proc = subprocess.run([sys.executable, "-m", "tenantprint", "lab", *args],
                          capture_output=True, text=True, env=env, timeout=120)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0, out
    return out


def _ns(name: str) -> list[str]:
    return ["ip", "netns", "exec", f"{PREFIX}-{name}"]


def test_up_is_idempotent_status_is_json_and_down_leaves_nothing():
    need_root()
    need_binary("ip", "nsenter", "unshare")
    try:
        first = _lab("up")
        assert first["lab"]["up"] is True
        assert set(first["hosts"]) >= {"office", "cowork", "inet"}
        again = _lab("up")
        assert again["hosts"] == first["hosts"]
        status = _lab("status")
        assert status["lab"]["prefix"] == PREFIX and status["lab"]["up"]

        # The office LAN works through the inet router, and each host has its own /run. (From the
        # office outwards: the MFP's device firewall answers no ping from the LAN.)
        ping = subprocess.run([*_ns("office"), "ping", "-c1", "-W2", "10.77.0.20"], capture_output=True)
        assert ping.returncode == 0, ping.stderr
        ping = subprocess.run([*_ns("office"), "ping", "-c1", "-W2", "10.78.0.11"], capture_output=True)
        assert ping.returncode == 0, ping.stderr
        root = status["lab"]["dir"]
        marker = f"{root}/hosts/office/run/marker"
        open(marker, "w").close()
        office = ["nsenter", f"--net=/run/netns/{PREFIX}-office", f"--mount={root}/mnt/office", "--"]
        cowork = ["nsenter", f"--net=/run/netns/{PREFIX}-cowork", f"--mount={root}/mnt/cowork", "--"]
        assert subprocess.run([*office, "test", "-e", "/run/marker"]).returncode == 0
        assert subprocess.run([*cowork, "test", "-e", "/run/marker"]).returncode != 0
    finally:
        down = _lab("down")
    assert down["leftovers"] == {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{PREFIX}-" not in listed
    with open("/proc/self/mountinfo") as f:
        assert f"/{PREFIX}/" not in f.read()
