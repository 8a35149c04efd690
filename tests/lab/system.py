"""Helpers and fixtures of the lab scenarios: the `tenantprint lab` CLI (the contract), the cleanup
invariants, and the `system` / `clean_system` fixtures (imported by the test modules: a second
`conftest.py` would clash with the other test folders' `from conftest import ...`).

The whole system in the lab, driven through `tenantprint lab ...`.

One full lab per test session (prefix `tps`): cloud, two orgs' gateways, RADIUS servers and desk PCs,
and the MFP with its firmware. After every scenario the cleanup invariants are asserted: the MFP is
idle and holds nothing of any org (no session tmpfs, no VICI connection/SA/credential, no gateway in
the device firewall's set, no session cupsd, no canary secret in a file it can see).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.poll import wait_for  # noqa: F401 (re-exported for the scenarios)
from lab_cli import run_lab_cli
from prereq import need_binary, need_root


# TP_SCENARIO_PREFIX lets two people (or helpers) run scenarios side by side on separate labs.
PREFIX = os.environ.get("TP_SCENARIO_PREFIX", "tps")


def lab_cli(*args: str, timeout: float = 180) -> dict:
    return run_lab_cli(PREFIX, *args, timeout=timeout)


def office_leftovers(system) -> list[str]:
    """Every trace of a session on the MFP host, as a list of findings (empty when clean)."""
    from lab.scan import host_mounts, host_pids, scan

    from lab.scan import sandbox_pids
    from lab.services.firmware import firmware_status

    office = system.host("office")
    left = []

    def spare_now() -> dict:
        try:
            return firmware_status(system).get("spare") or {}
        except OSError:  # the firmware is down (a crash): whatever it left counts
            return {}

    # The next session's sandbox is built a moment after a purge (firmware.runtime.SPARE_DELAY_S):
    # wait for it, so that its making is not mistaken for a leftover.
    deadline = time.monotonic() + 8
    while not spare_now() and time.monotonic() < deadline and system.procs.get("firmware") and \
            system.procs.get("firmware").alive():
        time.sleep(0.2)
    pids = sorted(set(host_pids(office.ns)) | set(sandbox_pids(office)))
    # The spare holds nothing of any org: its charon must be empty.
    spare = spare_now()
    if spare:
        vici = f"unix:///run/tenantprint/sandboxes/{spare['sandbox']}/charon.vici"
        for what in ("--list-conns", "--list-sas", "--list-certs"):
            out = office.run(["swanctl", what, "--uri", vici], check=False).stdout.decode()
            if out.strip():
                left.append(f"spare charon {what}: {out.strip()[:200]}")
    mounts = {m for pid in pids[:1] for m in host_mounts(pid)}  # one mount namespace per host: one pid tells
    name = spare.get("sandbox", "-")
    # the spare's own tmpfs and cupsd (started with it, before any org) are not a session's
    left += [f"session tmpfs mounted: {m}" for m in sorted(mounts)
             if m.startswith("/run/tenantprint/session") and m.rstrip("/").split("/")[-1] != name]
    left += [f"sandbox mount: {m}" for m in sorted(mounts)
             if m.startswith(("/run/tenantprint/sandboxes/", "/run/netns/")) and not m.split("/")[-1].startswith(name)]
    netns = office.run(["sh", "-c", "ls /run/netns 2>/dev/null; ls /run/tenantprint/sandboxes 2>/dev/null; true"],
                       check=False).stdout.decode().split()
    left += [f"sandbox left: {n}" for n in netns if not n.startswith(name)]
    links = office.run(["ip", "-br", "link"], check=False).stdout.decode()
    left += [f"sandbox link: {line.split()[0]}" for line in links.splitlines()
             if line.startswith("tpv") and line.split()[0].split("@")[0] != spare.get("link")]
    for pid in pids:
        try:
            # a session's cupsd runs from its session tmpfs (the device's own, building the engine's
            # model or driving a printer, hold nothing of any org)
            if os.readlink(f"/proc/{pid}/exe") == "/usr/sbin/cupsd" and pid != spare.get("cupsd_pid") and \
                    b"/run/tenantprint/session" in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(f"session cupsd pid {pid}")
        except OSError:
            pass
    spool = office.path("/run/tenantprint/engine")  # released documents wait here only until printed
    if spool.is_dir() and (files := sorted(p.name for p in spool.iterdir())):
        left.append(f"engine spool: {files}")
    for pid in pids:  # no charon outlives its session's sandbox
        try:
            if os.readlink(f"/proc/{pid}/exe") == "/usr/lib/ipsec/charon" and pid != spare.get("charon_pid"):
                left.append(f"charon pid {pid}")
        except OSError:
            pass
    # The device firewall stays installed between sessions; only the session's gateway goes.
    from hal.net import FirewallError
    from hal.net.firewall import Firewall
    try:
        left += [f"firewall gateway {g}" for g in Firewall("libipsec", netns=office.ns).gateways()]
    except FirewallError as exc:
        left.append(f"device firewall: {exc}")
    # Files, argv, VICI inventory and the memory of every process on the MFP (the firmware, charon):
    # the secret keeper that held the org's secrets is gone with the session.
    left += [f"{f['canaries']} in {f['where']}{_which(f)}" for f in scan(system, "office")["findings"]]
    return left


def _which(finding: dict) -> str:
    """For a process's finding: what the process is (its command line, its parent's), to tell a
    keeper that outlived its session from the daemon or a spare."""
    m = re.match(r"pid (\d+) ", finding["where"])
    if not m:
        return ""
    try:
        pid = m.group(1)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        parent = Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except (OSError, IndexError):
        return " (gone)"
    return f" [{argv.strip()}; parent {ppid}: {parent.strip()}]"


@pytest.fixture(scope="session")
def system():
    need_root()
    need_binary("charon-systemd", "cupsd", "ippeveprinter", "pcscd", "freeradius", "nft", "swanctl")
    from lab.lab import Lab
    from lab.layout import LabLayout

    subprocess.run([sys.executable, "-m", "tenantprint", "lab", "down"], env=dict(os.environ, TP_LAB_PREFIX=PREFIX),
                   capture_output=True)
    lab_cli("up", "--ldap", "globex")  # acme asks FreeRADIUS, globex its slapd
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
    left = office_leftovers(system)
    assert left == [], left


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
    if not system.service("engine").status(system).get("running"):
        lab_cli("fault", "engine-start")
    fw = system.service("firmware")
    if not fw.running(system):
        lab_cli("fault", "firmware-start")
    st = firmware_status(system)
    if st["state"] == "fault":
        from lab.services.firmware import firmware_request
        firmware_request(system, {"cmd": "clear-fault"})
    if st["state"] not in ("idle",) or st.get("sessions"):
        # End whatever session is open the way an operator would: restart the daemon (SIGTERM purges).
        fw.stop(system)
        fw.start(system)
    wait_for(lambda: (st := firmware_status(system))["state"] == "idle" and not st.get("sessions"), 30,
             "the firmware at rest")
    # No job is lost: a job the last scenario left held went back to its desk's holding queue, and
    # would be delivered to the next scenario's session. At rest, no desk keeps one.
    from lab.services.org_agents import clear_desk_held, desk_queues

    for org in ("acme", "globex"):
        wait_for(lambda: not desk_queues(system, org), 15, f"{org}'s desk without an MFP queue")
        clear_desk_held(system, org)
