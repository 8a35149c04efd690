"""The lab with the MFP as a QEMU guest (`lab up --mfp vm`, lab/services/mfp_vm.py), for the
scenarios in this folder: one guest boot for the whole module (TCG is slow), driven through the
`tenantprint lab` CLI as every lab scenario is, plus `guest()` for a look inside the device.

The image is the amd64 twin with the lab layer: built by `provisioning/image/build-image --target
twin --cache` (reused while its inputs are unchanged) or named by `TP_TWIN_DIR`. The lab's prefix
is `TP_VM_PREFIX` (default `tpvm`). Under CI=true every missing prerequisite fails (prereq.py),
the image included.

Imported by the test modules (not a conftest.py: a second one would clash with the other folders'
`from conftest import ...`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.poll import wait_for  # noqa: F401 (re-exported for the scenarios)
from lab_cli import run_lab_cli
from prereq import IN_CI, need, need_binary, need_root

PREFIX = os.environ.get("TP_VM_PREFIX", "tpvm")
CLEAN = {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}


def lab_cli(*args: str, timeout: float = 600) -> dict:
    return run_lab_cli(PREFIX, *args, timeout=timeout)


def twin_image() -> dict:
    """The twin (built or from the cache), timed: {"dir", "key", "cached", "seconds"}."""
    from lab.host import LabError
    from lab.services import mfp_vm

    t0 = time.monotonic()
    try:
        image = mfp_vm.twin_image()
    except LabError as exc:
        need(False, f"the amd64 twin image ({exc})")
    image["seconds"] = round(time.monotonic() - t0, 1)
    return image


@pytest.fixture(scope="module", name="vm_lab")
def vm_lab_fixture():
    """The lab, up with the MFP guest booted and at rest; down (and nothing of it left) afterwards."""
    need_root()
    need_binary("qemu-system-x86_64", "dnsmasq", "qemu-img", "mkfs.vfat", "mcopy", "ssh", "ssh-keygen",
                "ippeveprinter", "charon-systemd", "freeradius")
    if not os.environ.get("TP_TWIN_DIR"):
        need_binary("mmdebstrap", "mkfs.ext4")
    from lab.lab import Lab
    from lab.layout import LabLayout

    image = twin_image()
    env = dict(os.environ, TP_LAB_PREFIX=PREFIX)
    subprocess.run([sys.executable, "-m", "tenantprint", "lab", "down"], env=env, capture_output=True)
    t0 = time.monotonic()
    up = lab_cli("up", "--mfp", "vm", timeout=900)
    timings = {"image_s": image["seconds"], "image_cached": image.get("cached"), "up_s": round(time.monotonic() - t0, 1),
               "boot": up["mfp"].get("boot")}
    print(f"\nVM lab timings: {json.dumps(timings)}", file=sys.stderr)
    base = Path(os.environ.get("TP_LAB_DIR", "/var/tmp/tenantprint-lab"))
    the_lab = Lab(layout=LabLayout(prefix=PREFIX, root=base / PREFIX))
    the_lab.timings = timings
    yield the_lab
    down = lab_cli("down")
    assert down["leftovers"] == CLEAN


def guest(lab, *argv: str, check: bool = True, timeout: float = 120) -> str:
    """A command run as root in the MFP guest (over the lab's ssh connection): its stdout."""
    return lab.service("firmware").guest(lab, list(argv), check=check, timeout=timeout).stdout.decode()


def sandbox_xfrm_states(lab) -> list[dict]:
    """Every XFRM SA in the guest, its own network namespace's and each session sandbox's (found by
    their charons: the sandboxes' handles are the firmware's mounts only): [{src, dst, proto, spi,
    mode, encap}] from `ip xfrm state` (text: iproute2 6.1 has no JSON for xfrm)."""
    script = "for p in 1 $(pgrep -x charon); do nsenter -t $p -n ip xfrm state; done"
    states: list[dict] = []
    for line in guest(lab, "sh", "-c", script).splitlines():
        words = line.split()
        if line.startswith("src ") and len(words) >= 4:
            states.append({"src": words[1], "dst": words[3]})
        elif words[:1] == ["proto"] and states:
            states[-1].update(proto=words[1], spi=words[3] if len(words) > 3 else None,
                              mode=words[words.index("mode") + 1] if "mode" in words else None)
        elif words[:1] == ["encap"] and states:
            states[-1]["encap"] = words[2] if len(words) > 2 else words[1]
    return states


__all__ = ["IN_CI", "lab_cli", "guest", "sandbox_xfrm_states", "vm_lab_fixture", "wait_for"]
