"""hal/sandbox where the firmware uses it: inside the lab's `office` host, with the production defaults.

The firmware daemon runs on `office` (the lab's netns plus a persistent mount namespace whose /run
is a bind), beside other lab hosts with their own mount namespaces and handles; there it builds its
sandboxes under /run/tenantprint/sandboxes and starts a charon in each. Each round runs in a fresh
process on the host, as the daemon would: three sandboxes at once (one with a charon), checked from
inside, destroyed, and nothing of them left; then the same again, twice, while a sandbox round runs
on `cowork` too. A crashed round (its holders gone with it) leaves stale sandboxes that the next
process finds by name and destroys.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prereq import need_binary

REPO = str(Path(__file__).resolve().parents[2])
CHARON = "/usr/lib/ipsec/charon"

ROUND = r"""
import json, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from hal.sandbox.forwarding import Forwarding
from hal.sandbox.mounts import release_run_root
from hal.sandbox.namespaces import Sandbox, stale_sandboxes
from hal.tunnel.sandbox_charon import SandboxCharon

crash = sys.argv[2] == "crash"
out = {"stale_before": stale_sandboxes("/run/tenantprint/sandboxes")}
boxes = [Sandbox(f"tps-{i}", i) for i in range(3)]  # the production defaults: the device is this process's
t0 = time.monotonic()
for sb in boxes:
    sb.create()
out["create_ms"] = (time.monotonic() - t0) * 1000 / len(boxes)
out["run_dirs"] = [str(sb.run_dir) for sb in boxes]
out["inside"] = [subprocess.run(sb.argv(["sh", "-c", "echo in > /run/x; ip -br addr show eth0; cat /proc/self/mountinfo"]),
                                capture_output=True, text=True).stdout for sb in boxes]
out["run_x"] = [(sb.run_dir / "x").read_text() for sb in boxes]
charon = SandboxCharon(boxes[0], "libipsec")
t0 = time.monotonic()
charon.start()
out["charon_ms"] = (time.monotonic() - t0) * 1000
out["charon"] = {"alive": charon.alive(), "vici": str(charon.vici_socket), "rss_kib": charon.rss_kib()}
if crash:  # as a daemon that dies: nothing torn down, its children (the holders) lose their owner
    print(json.dumps(out), flush=True)
    import os
    os._exit(0)
out["charon_stop"] = charon.stop()
t0 = time.monotonic()
out["destroy"] = [sb.destroy() for sb in boxes]
out["destroy_ms"] = (time.monotonic() - t0) * 1000 / len(boxes)
out["leftovers"] = [sb.leftovers() for sb in boxes]
out["stale_after"] = stale_sandboxes("/run/tenantprint/sandboxes")
Forwarding().remove()
release_run_root("/run/tenantprint/sandboxes")
print(json.dumps(out))
"""

RECOVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from hal.sandbox.forwarding import Forwarding
from hal.sandbox.mounts import release_run_root
from hal.sandbox.namespaces import destroy_stale, stale_sandboxes
stale = stale_sandboxes("/run/tenantprint/sandboxes")
out = {"stale": stale, "destroy": {name: destroy_stale(name) for name in stale}}
out["stale_after"] = stale_sandboxes("/run/tenantprint/sandboxes")
Forwarding().remove()
release_run_root("/run/tenantprint/sandboxes")
print(json.dumps(out))
"""


def _start(lab, host: str, script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(lab.host(host).argv([sys.executable, "-I", "-c", script, REPO, *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


def _nothing_of_ours_on(lab, host: str) -> None:
    h = lab.host(host)
    assert h.run(["ip", "netns", "list"]).stdout.decode().strip() == ""
    assert not [line for line in h.run(["cat", "/proc/self/mountinfo"]).stdout.decode().splitlines()
                if "/tenantprint/sandboxes" in line or " nsfs " in line.split(" - ")[-1][:6]]
    assert "tpv" not in h.run(["ip", "-br", "link"]).stdout.decode()


def _check_round(out: dict, host: str) -> None:
    assert out["stale_before"] == []
    assert out["run_dirs"] == [f"/run/tenantprint/sandboxes/tps-{i}" for i in range(3)]
    assert out["run_x"] == ["in\n"] * 3
    for i, inside in enumerate(out["inside"]):
        assert f"100.64.200.{4 * i + 2}/30" in inside  # its own side of its own link
        assert "nsfs" not in inside and "/tenantprint/sandboxes" not in inside  # no handle, no other run_dir
    assert out["charon"]["alive"] and out["charon"]["vici"] == "/run/tenantprint/sandboxes/tps-0/charon.vici"
    assert out["charon_stop"] == []
    assert out["destroy"] == [[], [], []] and out["leftovers"] == [[], [], []]
    assert out["stale_after"] == []
    print(f"[sandbox in lab] on {host}: create {out['create_ms']:.0f} ms, destroy {out['destroy_ms']:.0f} ms "
          f"(means of 3), charon ready {out['charon_ms']:.0f} ms")


@pytest.fixture(scope="module")
def hosts(lab):
    need_binary("nsenter", "unshare", "nft", CHARON)
    yield lab
    for host in ("office", "cowork"):  # what a failed round left
        lab.host(host).run([sys.executable, "-I", "-c", RECOVER, REPO], check=False)


def test_sandboxes_with_the_production_defaults_on_the_office_host_twice(hosts):
    lab = hosts
    for _ in range(2):
        office, cowork = _start(lab, "office", ROUND, "clean"), _start(lab, "cowork", ROUND, "clean")
        _check_round(_result(office), "office")
        _check_round(_result(cowork), "cowork")
        _nothing_of_ours_on(lab, "office")
        _nothing_of_ours_on(lab, "cowork")


def test_a_crashed_daemons_sandboxes_are_found_stale_and_destroyed(hosts):
    lab = hosts
    crashed = _result(_start(lab, "office", ROUND, "crash"))
    assert crashed["charon"]["alive"]
    recovered = _result(_start(lab, "office", RECOVER))
    assert sorted(recovered["stale"]) == ["tps-0", "tps-1", "tps-2"]
    assert recovered["destroy"] == {name: [] for name in recovered["stale"]}
    assert recovered["stale_after"] == []
    _nothing_of_ours_on(lab, "office")
    # and a new daemon builds them again
    _check_round(_result(_start(lab, "office", ROUND, "clean")), "office")
    _nothing_of_ours_on(lab, "office")
