"""The claims on the MFP as a real systemd machine (issue 17): the amd64 twin image booted in QEMU
(TCG), the firmware as the shipped unit (Type=notify, WatchdogSec, hardening, the tmpfs), enrolled
at first boot from the token on its boot disk, the tunnel on kernel XFRM (ESP in the guest's kernel,
`meta ipsec exists` in its firewall). One boot for the module; the scenarios follow each other."""

from __future__ import annotations

import ipaddress
import time

import pytest

from vm_system import guest, lab_cli, sandbox_xfrm_states, vm_lab_fixture, wait_for  # noqa: F401 (the fixture vm_lab)

DOC = "/usr/share/cups/data/default-testpage.pdf"
GATEWAY = "10.78.0.11"  # acme's gateway (lab/orgs.py)
ORG_LAN = ipaddress.ip_network("10.20.0.0/24")
# TCG: the first scenario also boots the guest (and may build the image); the others wait for a
# watchdog or a reboot
pytestmark = pytest.mark.timeout(1800)


def _status() -> dict:
    return lab_cli("status")


def _at_rest(timeout: float = 180) -> dict:
    return wait_for(lambda: (st := _status())["firmware"].get("state") == "idle" and not st["firmware"].get("sessions")
                    and st, timeout, "the guest's firmware at rest")


def _clean_scan() -> dict:
    scan = lab_cli("scan-secrets", timeout=900)
    assert scan["clean"], scan["findings"]
    assert scan["processes_scanned"] >= 20 and scan["long_term_secrets"]["served"] == []
    return scan


def test_the_mfp_is_the_image_booted_with_its_own_units(vm_lab):
    st = _status()
    assert st["mfp"]["kind"] == "vm" and st["mfp"]["running"]
    assert st["firmware"]["state"] == "idle"
    unit = dict(line.split("=", 1) for line in guest(
        vm_lab, "systemctl", "show", "-p", "Type,WatchdogUSec,ActiveState,FragmentPath,NRestarts",
        "tenantprint-firmware.service").splitlines())
    assert unit.pop("FragmentPath").endswith("/tenantprint-firmware.service")
    assert unit == {"Type": "notify", "WatchdogUSec": "30s", "ActiveState": "active", "NRestarts": "0"}
    # first-boot enrolment from the token the operator put on the boot partition: enrolled, token gone
    assert guest(vm_lab, "ls", "/boot/firmware/tenantprint").split() == ["ca.pem", "cloud-url"]
    assert "device_id" in guest(vm_lab, "cat", "/var/lib/tenantprint/enrolment.json")
    assert guest(vm_lab, "systemctl", "is-active", "tenantprint-enrol.service", check=False).strip() == "inactive"
    # the network as a device gets it: the image's own networkd took the MFP's address by DHCP (a
    # dynamic address, a lease) and gave timesyncd the NTP server DHCP named (the office's);
    # timesyncd synchronised from it, and the firmware's clock gate opened
    assert "dynamic" in guest(vm_lab, "ip", "-4", "-o", "addr", "show", "to", "10.77.0.10").split()
    assert guest(vm_lab, "timedatectl", "show-timesync", "-p", "ServerAddress", "--value").strip() == "10.77.0.9"
    assert st["firmware"]["clock"] == {"synchronised": True, "required": True}
    # the device firewall as the kernel backend has it: IPP only through IPsec
    assert "meta ipsec exists" in guest(vm_lab, "nft", "list", "table", "inet", "tenantprint")


def test_claims_on_kernel_xfrm(vm_lab):
    """Tap -> the tunnel on the guest's kernel XFRM -> the desk's queue -> a held job -> released by
    the owner's tap after RADIUS -> printed by the engine -> the session ends and is purged."""
    _at_rest()
    st = lab_cli("tap", "--org", "acme", "--user", "alice", timeout=300)
    assert st["state"] == "ready" and st["org"] == "acme", st.get("panel")
    assert st["tunnel"]["up"] and ipaddress.ip_address(st["tunnel"]["virtual_ip"]) in ORG_LAN
    status = _status()
    assert status["firmware"]["tunnel"]["backend"] == "kernel", status["firmware"]["tunnel"]
    sas = [s for s in sandbox_xfrm_states(vm_lab) if GATEWAY in (s["src"], s["dst"])]
    assert {s["proto"] for s in sas} == {"esp"} and len(sas) >= 2, sas  # in and out, in the kernel
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 60, "acme's desk queue")  # claim 1

    before = len(_status()["printed"])
    lab_cli("print", "--org", "acme", "--user", "alice", DOC)
    held = wait_for(lambda: _status()["firmware"]["held_jobs"], 90, "the held job")  # claims 2, 3
    assert [j["user"] for j in held] == ["alice"]
    time.sleep(2)
    assert _status()["printed"][before:] == []  # held: nothing prints without the owner's tap

    lab_cli("tap", "--org", "acme", "--user", "alice", timeout=300)  # claims 5, 6: RADIUS, then release
    printed = wait_for(lambda: _status()["printed"][before:], 90, "alice's document at the engine")
    assert [(p["user"], p["job_state"]) for p in printed] == [("alice", "completed")]
    assert _status()["firmware"]["held_jobs"] == []

    lab_cli("fault", "gateway-kill", "--org", "acme")  # the tunnel drops: the session ends (claim 4)
    try:
        wait_for(lambda: _status()["firmware"]["state"] == "idle", 90, "the purge after the tunnel dropped")
        wait_for(lambda: not _status()["desks"]["acme"]["queue"], 60, "acme's desk queue removed")
        assert [s for s in sandbox_xfrm_states(vm_lab) if GATEWAY in (s["src"], s["dst"])] == []
        _clean_scan()
    finally:
        lab_cli("fault", "gateway-start", "--org", "acme")


def test_a_hung_firmware_is_restarted_by_the_watchdog_and_its_session_purged(vm_lab):
    _at_rest()
    st = lab_cli("tap", "--org", "acme", "--user", "alice", timeout=300)
    assert st["state"] == "ready"
    restarts = int(guest(vm_lab, "systemctl", "show", "-p", "NRestarts", "--value", "tenantprint-firmware").strip())
    hang = lab_cli("fault", "firmware-hang")
    assert hang["watchdog_s"] == 30
    t0 = time.monotonic()
    wait_for(lambda: int(guest(vm_lab, "systemctl", "show", "-p", "NRestarts", "--value",
                               "tenantprint-firmware").strip()) > restarts, 150, "the watchdog's restart")
    st = _at_rest(timeout=180)
    print(f"\nhang -> restarted firmware at rest: {time.monotonic() - t0:.1f} s")
    assert st["firmware"]["org"] is None
    journal = guest(vm_lab, "journalctl", "-b", "-u", "tenantprint-firmware", "--no-pager", "-o", "cat")
    assert "Watchdog timeout" in journal or "watchdog" in journal.lower()
    _clean_scan()


@pytest.mark.on_demand  # ~2.5 min under TCG (a second boot): `make test-vm`, not in every CI run
def test_a_power_cut_mid_session_leaves_nothing_of_the_org(vm_lab):
    _at_rest()
    st = lab_cli("tap", "--org", "acme", "--user", "alice", timeout=300)
    assert st["state"] == "ready"
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 60, "acme's desk queue")
    lab_cli("print", "--org", "acme", "--user", "alice", DOC)
    wait_for(lambda: _status()["firmware"]["held_jobs"], 90, "the held job")
    boot_id = guest(vm_lab, "cat", "/proc/sys/kernel/random/boot_id").strip()
    cut = lab_cli("fault", "mfp-power-cut", timeout=600)
    print(f"\npower cut -> firmware at rest again: {cut['back_s']} s")
    assert guest(vm_lab, "cat", "/proc/sys/kernel/random/boot_id").strip() != boot_id
    st = _at_rest()
    assert st["firmware"]["org"] is None and st["firmware"]["held_jobs"] == []
    _clean_scan()  # the guest's files and memory, and its whole disk as written
    # no job is lost: the held job went back to acme's desk, for the org's next session
    wait_for(lambda: _status()["desks"]["acme"]["held"], 120, "the job back at acme's desk")
