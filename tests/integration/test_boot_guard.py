"""The image's boot guard, and the firmware unit's cleanup, against the real kernel.

tenantprint-boot-guard.service loads a file the image renders at build time (the image recipe's
hooks/30-system.sh runs `hal.net.firewall.boot_guard()`); here the same command renders it, and it
must equal `boot_guard()`. Then it is loaded, exactly as the unit's ExecStart does, into a
throwaway router namespace that forwards (ip_forward=1) between two others: before it, a ping
crosses; after it, none does, while the router itself still answers. The firmware unit's
ExecStopPost is run likewise against the sandboxes' table, present and absent.

The namespaces are this test's own (`tpbg<pid><role>`), removed at the end; traffic stays between
them (documentation addresses, 192.0.2.0/24 and 198.51.100.0/24).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from prereq import need_binary, need_root

from hal.net.firewall import boot_guard
from hal.sandbox.forwarding import Forwarding

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
CHROOT_SCRIPT = REPO / "provisioning/image/hooks/30-system.sh"
VENV_PYTHON = "/opt/tenantprint/venv/bin/python"
A_IP, R_A_IP, R_B_IP, B_IP = "192.0.2.2", "192.0.2.1", "198.51.100.1", "198.51.100.2"


def _service(unit: str, key: str) -> list[str]:
    values = []
    section = None
    for line in (UNITS / unit).read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def guard_argv() -> list[str]:
    [exec_start] = _service("tenantprint-boot-guard.service", "ExecStart")
    return shlex.split(exec_start)


def render_command(dest: str) -> str:
    """The Python the chroot script runs to write `dest` (`python -c '...' > dest`)."""
    found = re.findall(rf"^{re.escape(VENV_PYTHON)} -c \\\n\s*'([^']*)' \\\n\s*> (\S+)$", CHROOT_SCRIPT.read_text(), re.M)
    code = [c for c, d in found if d == dest]
    assert len(code) == 1, f"{CHROOT_SCRIPT.name} renders {dest} {len(code)} times"
    return code[0]


def render(tmp_path: Path) -> Path:
    """The guard's file as the image build renders it (this venv's Python for the device's)."""
    argv = guard_argv()
    assert argv[:2] == ["/usr/sbin/nft", "-f"] and len(argv) == 3
    out = tmp_path / "boot-guard.nft"
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-c", render_command(argv[2])], stdout=f, check=True, cwd=REPO, timeout=60)
    return out


def test_the_rendered_file_is_boot_guard(tmp_path):
    assert render(tmp_path).read_text() == boot_guard()
    chroot = CHROOT_SCRIPT.read_text().splitlines()
    assert "systemctl enable tenantprint-boot-guard.service" in chroot


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture
def world():
    """Three namespaces, a - r - b, r routing between them; removed after."""
    need_root()
    need_binary("ip", "nft", "ping")
    base = f"tpbg{os.getpid()}"
    a, r, b = (f"{base}{role}" for role in "arb")
    try:
        for ns in (a, r, b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for left, right, left_ip, right_ip in ((a, r, A_IP, R_A_IP), (b, r, B_IP, R_B_IP)):
            sh("ip", "-n", left, "link", "add", "veth0", "type", "veth", "peer", "name", f"to-{left[-1]}", "netns", right)
            sh("ip", "-n", left, "addr", "add", f"{left_ip}/24", "dev", "veth0")
            sh("ip", "-n", right, "addr", "add", f"{right_ip}/24", "dev", f"to-{left[-1]}")
            sh("ip", "-n", left, "link", "set", "veth0", "up")
            sh("ip", "-n", right, "link", "set", f"to-{left[-1]}", "up")
            sh("ip", "-n", left, "route", "add", "default", "via", right_ip)
        sh("ip", "netns", "exec", r, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        yield a, r, b
    finally:
        for ns in (a, r, b):
            sh("ip", "netns", "delete", ns, check=False)
        leftovers = [ns for ns in (a, r, b) if Path(f"/run/netns/{ns}").exists()]
        assert not leftovers, leftovers


def pings(ns: str, address: str) -> bool:
    return sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


def test_the_guard_drops_what_the_kernel_would_forward(world, tmp_path):
    a, r, b = world
    assert sh("ip", "netns", "exec", r, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert pings(a, B_IP), "without the guard the router forwards (the control)"

    proc = sh("ip", "netns", "exec", r, *guard_argv()[:2], str(render(tmp_path)), check=False)
    assert proc.returncode == 0, proc.stderr

    assert not pings(a, B_IP) and not pings(b, A_IP)
    assert pings(a, R_A_IP) and pings(b, R_B_IP), "the guard changes nothing but forwarding"
    listing = sh("ip", "netns", "exec", r, "nft", "list", "table", "inet", "tenantprint").stdout
    dropped = re.search(r'counter packets (\d+) bytes \d+ drop comment "drop-forward"', listing)
    assert dropped and int(dropped.group(1)) >= 2


def test_firmware_unit_drops_the_sandboxes_table_after_it_stops(world):
    _, r, _ = world
    [stop_post] = _service("tenantprint-firmware.service", "ExecStopPost")
    argv = ["ip", "netns", "exec", r, *shlex.split(stop_post)]
    Forwarding(r).install()
    Forwarding(r).add_link("tpv0")
    assert sh(*argv, check=False).returncode == 0
    assert "tenantprint_sandboxes" not in sh("ip", "netns", "exec", r, "nft", "list", "tables").stdout
    proc = sh(*argv, check=False)  # absent: nothing to do, no failure
    assert proc.returncode == 0, proc.stderr
