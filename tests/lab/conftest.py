"""Fixtures of the lab scenarios: one full lab per test session (see system.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prereq import need_binary, need_root
from system import PREFIX, lab_cli, office_leftovers, wait_for

@pytest.fixture(scope="session")
def system():
    need_root()
    need_binary("charon-systemd", "cupsd", "ippeveprinter", "pcscd", "freeradius", "nft", "swanctl")
    from lab.lab import Lab
    from lab.layout import LabLayout

    subprocess.run([sys.executable, "-m", "tenantprint", "lab", "down"], env=dict(os.environ, TP_LAB_PREFIX=PREFIX),
                   capture_output=True)
    lab_cli("up")
    base = Path(os.environ.get("TP_LAB_DIR", "/var/tmp/tenantprint-lab"))
    the_lab = Lab(layout=LabLayout(prefix=PREFIX, root=base / PREFIX))
    yield the_lab
    down = lab_cli("down")
    assert down["leftovers"] == {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}


@pytest.fixture
def clean_system(system):
    """The system at rest before the scenario; after it, back to rest and nothing of any org left."""
    _to_rest(system)
    yield system
    _to_rest(system)
    assert office_leftovers(system) == []


def _to_rest(system) -> None:
    from lab.services.firmware import firmware_status

    for org in ("acme", "globex"):
        gw = system.service(f"gateway-{org}")
        if not gw.running(system):
            lab_cli("fault", "gateway-start", "--org", org)
        if not system.service(f"radius-{org}").status(system).get("running"):
            lab_cli("fault", "radius-start", "--org", org)
    if not system.service("cloud").running(system):
        lab_cli("fault", "cloud-start")
    fw = system.service("firmware")
    if not fw.running(system):
        lab_cli("fault", "firmware-start")
    st = firmware_status(system)
    if st["state"] == "fault":
        from lab.services.firmware import firmware_request
        firmware_request(system, {"cmd": "clear-fault"})
    if st["state"] not in ("idle",):
        # End whatever session is open the way an operator would: restart the daemon (SIGTERM purges).
        fw.stop(system)
        fw.start(system)
    wait_for(lambda: firmware_status(system)["state"] == "idle", 30, "the firmware at rest")
