"""The static unit files in systemd/: verified by systemd itself, hardened, and in step with the CLI.

`systemd-analyze verify --root=<tree>` runs against a tree that holds the units where the image
puts them, the real `tenantprint` entry point at /opt/tenantprint/venv/bin, and this machine's
systemd/strongSwan units and nft standing in for the device's packages. It checks that every
ExecStart binary exists in that tree, so a wrong path fails (a negative control proves it can).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prereq import need, need_binary

REPO = Path(__file__).resolve().parents[2]
UNITS_DIR = REPO / "systemd"
UNITS = sorted(p.name for p in UNITS_DIR.glob("*.service"))
VENV_TENANTPRINT = Path(sys.executable).parent / "tenantprint"
OUR_NAMES = re.compile(r"tenantprint")
# systemd-analyze security exposure (0 = locked down, 10 = unprotected); measured 3.9 for the firmware
# (3.5 before its sandboxes: mount namespaces, CAP_SYS_CHROOT and CAP_SYS_PTRACE cost 0.4), 1.6 for
# the boot guard.
MAX_EXPOSURE = {"tenantprint-firmware.service": 4.0}
MAX_EXPOSURE_OTHERS = 2.5


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd units repeat keys)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def build_root(root: Path, units_dir: Path = UNITS_DIR) -> Path:
    """A root tree laid out as on the device (see provisioning/image/build-image, stage_tree)."""
    # the org gateway's agent (tenantprint-gateway-agent.service) binds to charon-systemd's unit
    need(Path("/lib/systemd/system/strongswan.service").exists(), "strongswan's systemd unit (charon-systemd)")
    need_binary("/usr/sbin/charon-systemd", "/usr/sbin/swanctl", "/usr/sbin/nft")
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/sbin").mkdir(parents=True)
    for tool in ("charon-systemd", "swanctl", "nft"):  # nft: the boot guard, the firmware's ExecStopPost
        shutil.copy2(f"/usr/sbin/{tool}", root / "usr/sbin" / tool)
    shutil.copy2("/lib/systemd/systemd-sysctl", root / "usr/lib/systemd/systemd-sysctl")
    (root / "etc/sysctl.d").mkdir(parents=True)
    shutil.copy2(units_dir / "sysctl.d/90-tenantprint.conf", root / "etc/sysctl.d/")
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for unit in units_dir.glob("*.service"):
        shutil.copy2(unit, system / unit.name)
    (root / "opt/tenantprint/venv/bin").mkdir(parents=True)
    shutil.copy2(VENV_TENANTPRINT, root / "opt/tenantprint/venv/bin/tenantprint")
    (root / "opt/tenantprint/libexec").mkdir(parents=True)
    shutil.copy2(units_dir / "libexec/tenantprint-first-boot", root / "opt/tenantprint/libexec/")
    shutil.copy2(units_dir / "libexec/tenantprint-reader-setup", root / "opt/tenantprint/libexec/")
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=60)


def complaints(proc: subprocess.CompletedProcess) -> list[str]:
    """Lines of verify output about our files (warnings such as unknown keys do not change rc)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if OUR_NAMES.search(line)]


@pytest.fixture(scope="module")
def device_root(tmp_path_factory) -> Path:
    need_binary("systemd-analyze")
    return _panel_root(tmp_path_factory.mktemp("device-root"))  # build_root() + the panel units' binaries


def test_every_process_has_a_unit():
    assert set(UNITS) == {"tenantprint-firmware.service", "tenantprint-enrol.service",
                          "tenantprint-cloud.service", "tenantprint-gateway-agent.service",
                          "tenantprint-desk-agent.service", "tenantprint-reader-setup.service",
                          "tenantprint-panel.service", "tenantprint-kiosk.service",
                          "tenantprint-boot-guard.service"}


def test_no_strongswan_unit_on_the_device():
    """Each session's charon is the firmware's own, in the session's sandbox: nothing of the MFP's
    waits for, wants or configures charon-systemd's strongswan.service (the org gateway's agent,
    not the MFP's, binds to it)."""
    assert not (UNITS_DIR / "strongswan.service.d").exists()
    for unit in (u for u in UNITS if u != "tenantprint-gateway-agent.service"):
        for values in parse_unit(UNITS_DIR / unit).get("Unit", {}).values():
            assert "strongswan" not in " ".join(values), unit


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies(device_root, unit):
    proc = verify(device_root, unit)
    assert proc.returncode == 0 and not complaints(proc), proc.stdout + proc.stderr


def test_verify_fails_when_the_binary_is_missing(tmp_path):
    need_binary("systemd-analyze")
    root = build_root(tmp_path / "root")
    (root / "opt/tenantprint/venv/bin/tenantprint").unlink()
    proc = verify(root, "tenantprint-firmware.service")
    assert proc.returncode != 0
    assert "/opt/tenantprint/venv/bin/tenantprint" in proc.stderr


def test_verify_reports_an_unknown_directive(tmp_path):
    need_binary("systemd-analyze")
    units = tmp_path / "units"
    shutil.copytree(UNITS_DIR, units)
    path = units / "tenantprint-firmware.service"
    path.write_text(path.read_text().replace("LockPersonality=yes", "LockPersonality=yes\nLockPersonalty=yes"))
    proc = verify(build_root(tmp_path / "root", units), "tenantprint-firmware.service")
    assert complaints(proc), "a misspelt directive must be reported"


def test_firmware_unit_contract_and_hardening():
    u = parse_unit(UNITS_DIR / "tenantprint-firmware.service")
    svc, unit = u["Service"], u["Unit"]
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    assert svc["Restart"] == ["on-failure"] and int(svc["WatchdogSec"][0]) > 0
    assert svc["ExecStart"] == ["/opt/tenantprint/venv/bin/tenantprint firmware --config /etc/tenantprint/firmware.toml run"]
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "LockPersonality", "MemoryDenyWriteExecute",
                "PrivateMounts", "ProtectKernelModules", "ProtectKernelTunables",
                "RestrictSUIDSGID", "ProtectControlGroups"):
        assert svc[key] == ["yes"], key
    # the sandboxes' network and mount namespaces, the converter's empty network namespace: no other kind
    assert set(svc["RestrictNamespaces"][0].split()) == {"net", "mnt"}
    assert svc["ProtectSystem"] == ["strict"]
    # /run/netns: `ip netns add`'s handles, gone with the directory when the service stops
    assert svc["RuntimeDirectory"] == ["tenantprint netns"] and svc["StateDirectory"] == ["tenantprint"]
    # each sandbox's own net sysctls; the rest of /proc/sys stays read-only
    assert svc["ReadWritePaths"] == ["/proc/sys/net"]
    assert svc["LimitCORE"] == ["0"]  # a core dump would put org secrets on the SD card
    assert set(svc["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    caps = set(svc["CapabilityBoundingSet"][0].split())
    assert caps == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_NET_BIND_SERVICE",
                    "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"}
    assert "CAP_NET_RAW" not in caps  # charon's plugins need none (no raw ESP, farp, dhcp)
    assert "@system-service" in svc["SystemCallFilter"][0] and "@mount" in svc["SystemCallFilter"][0]
    assert "@debug" in svc["SystemCallFilter"][1].split()  # CAP_SYS_PTRACE for /proc's checks, never ptrace(2)
    after = " ".join(unit["After"]).split()
    for dep in ("network-online.target", "pcscd.socket", "tenantprint-enrol.service",
                "tenantprint-boot-guard.service"):
        assert dep in after
    assert "tenantprint-boot-guard.service" not in " ".join(unit["Wants"]).split()  # once per boot, not per start
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def test_firmware_unit_drops_the_sandboxes_table_after_it_stops():
    """Its ExecStopPost deletes exactly `hal.sandbox.forwarding`'s table, absent or not (run in a
    network namespace by tests/integration/test_boot_guard.py)."""
    from hal.sandbox.forwarding import TABLE_FAMILY, TABLE_NAME

    svc = parse_unit(UNITS_DIR / "tenantprint-firmware.service")["Service"]
    table = f"{TABLE_FAMILY} {TABLE_NAME}"
    assert [shlex.split(v) for v in svc["ExecStopPost"]] == [["/usr/sbin/nft", f"table {table}; delete table {table}"]]


def test_boot_guard_unit_runs_before_the_network_and_the_sysctls():
    u = parse_unit(UNITS_DIR / "tenantprint-boot-guard.service")
    unit, svc = u["Unit"], u["Service"]
    assert unit["DefaultDependencies"] == ["no"]
    before = " ".join(unit["Before"]).split()
    assert {"network-pre.target", "systemd-sysctl.service", "shutdown.target"} <= set(before)
    assert unit["Wants"] == ["network-pre.target"] and unit["Conflicts"] == ["shutdown.target"]
    assert "After" not in unit  # nothing to wait for: nft and its file are on the root filesystem
    assert unit["RefuseManualStart"] == ["yes"]  # once per boot: later it would add to the firmware's table
    assert svc["Type"] == ["oneshot"] and svc["RemainAfterExit"] == ["yes"]
    assert svc["ExecStart"] == ["/usr/sbin/nft -f /usr/lib/tenantprint/boot-guard.nft"]
    assert svc["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"] and svc["RestrictAddressFamilies"] == ["AF_NETLINK"]
    assert "PrivateNetwork" not in svc  # it guards the device's own network namespace
    assert u["Install"]["WantedBy"] == ["sysinit.target"]


def test_firmware_unit_applies_the_network_sysctls_the_firmware_checks():
    """The sysctl.d file is the one hal/net/sysctls.py checks, the image installs it, and the unit
    applies it (with full privileges: ProtectKernelTunables makes /proc/sys read-only) before start."""
    from hal.net.sysctls import REQUIRED, sysctl_d

    shipped = UNITS_DIR / "sysctl.d/90-tenantprint.conf"
    assert shipped.read_text() == sysctl_d()
    # the sandboxes' doors need forwarding; the device firewall's forward chain decides what goes
    assert REQUIRED["net.ipv4.ip_forward"] == "1" and REQUIRED["net.ipv4.conf.all.rp_filter"] == "1"
    assert REQUIRED["net.ipv4.conf.all.send_redirects"] == "0" and REQUIRED["net.ipv6.conf.all.forwarding"] == "0"
    assert REQUIRED["net.ipv4.conf.all.arp_ignore"] == "1" and REQUIRED["net.ipv4.conf.all.arp_announce"] == "2"
    svc = parse_unit(UNITS_DIR / "tenantprint-firmware.service")["Service"]
    assert svc["ExecStartPre"] == ["+/usr/lib/systemd/systemd-sysctl /etc/sysctl.d/90-tenantprint.conf"]
    recipe = (REPO / "provisioning/image/build-image").read_text()
    assert '("systemd/sysctl.d/90-tenantprint.conf", "etc/sysctl.d/90-tenantprint.conf")' in recipe


def test_enrol_unit_runs_once_and_before_the_firmware():
    u = parse_unit(UNITS_DIR / "tenantprint-enrol.service")
    assert u["Unit"]["ConditionPathExists"] == ["!/var/lib/tenantprint/enrolment.json"]
    assert "tenantprint-firmware.service" in u["Unit"]["Before"][0]
    assert u["Service"]["Type"] == ["oneshot"] and u["Service"]["Restart"] == ["on-failure"]
    assert u["Service"]["ExecStart"] == ["/opt/tenantprint/libexec/tenantprint-first-boot"]


def _exec_argv(unit: str) -> list[str]:
    """ExecStart as argv, with ${VAR} replaced by the unit's Environment= defaults."""
    svc = parse_unit(UNITS_DIR / unit)["Service"]
    env = {"CREDENTIALS_DIRECTORY": "/run/credentials/x", "TP_DESK_GATEWAY": "http://10.20.0.1:8631"}
    for line in svc.get("Environment", []):
        for pair in shlex.split(line):
            k, _, v = pair.partition("=")
            env[k] = v
    cmd = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], svc["ExecStart"][0])
    return shlex.split(cmd)


def _help(*words: str) -> str:
    proc = subprocess.run([str(VENV_TENANTPRINT), *words, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("unit", [u for u in UNITS if u not in ("tenantprint-enrol.service",
                                                                  "tenantprint-reader-setup.service",
                                                                  "tenantprint-boot-guard.service",
                                                                  # not the tenantprint CLI: see test_panel_service_options_exist_in_its_cli
                                                                  "tenantprint-panel.service",
                                                                  "tenantprint-kiosk.service")])
def test_execstart_options_exist_in_the_cli(unit):
    """Every --option an ExecStart passes is accepted where it stands: before the subcommand by the
    part's parser, after it by the subcommand's (catches CLI drift)."""
    argv = _exec_argv(unit)
    assert argv[0] == "/opt/tenantprint/venv/bin/tenantprint"
    part, rest = argv[1], argv[2:]
    words = [a for i, a in enumerate(rest) if not a.startswith("-") and not (i and rest[i - 1].startswith("--"))]
    sub = words[0]
    before, after = rest[:rest.index(sub)], rest[rest.index(sub) + 1:]
    for opts, words_ in ((before, (part,)), (after, (part, sub))):
        opts = [a for a in opts if a.startswith("--")]
        text = _help(*words_) if opts else ""
        for opt in opts:
            assert re.search(rf"(^|[\s\[,]){re.escape(opt)}\b", text), f"{unit}: {' '.join(words_)} has no {opt}"


def _exposure(root: Path, unit: str) -> float:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={root}", unit],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    need(m is not None, f"systemd-analyze security --offline=yes ({proc.stderr.strip()[:200]})")
    return float(m.group(1))


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure(device_root, unit):
    score = _exposure(device_root, unit)
    assert score <= MAX_EXPOSURE.get(unit, MAX_EXPOSURE_OTHERS), f"{unit}: exposure {score}"


# -- the card reader's boot-time setup (tenantprint-reader-setup) ------------------------------

READER_SETUP = UNITS_DIR / "libexec/tenantprint-reader-setup"
SYSTEMCTL_SHIM = """#!/bin/sh
echo "$*" >> "$SHIM_LOG"
"""


def test_reader_setup_unit_runs_early_and_before_the_firmware():
    u = parse_unit(UNITS_DIR / "tenantprint-reader-setup.service")
    unit, svc = u["Unit"], u["Service"]
    assert unit["DefaultDependencies"] == ["no"]
    before = " ".join(unit["Before"]).split()
    for dep in ("systemd-udev-trigger.service", "pcscd.socket", "sockets.target", "tenantprint-firmware.service"):
        assert dep in before
    assert svc["Type"] == ["oneshot"] and svc["RemainAfterExit"] == ["yes"]
    assert svc["ExecStart"] == ["/opt/tenantprint/libexec/tenantprint-reader-setup"]
    assert svc["CapabilityBoundingSet"] == [""] and svc["ReadWritePaths"] == ["/sys/bus/usb/drivers"]
    assert svc["RuntimeDirectory"] == ["modprobe.d"] and svc["RuntimeDirectoryPreserve"] == ["yes"]
    assert u["Install"]["WantedBy"] == ["sysinit.target"]
    fw = parse_unit(UNITS_DIR / "tenantprint-firmware.service")
    assert "tenantprint-reader-setup.service" in " ".join(fw["Unit"]["After"]).split()
    assert "tenantprint-reader-setup.service" in " ".join(fw["Unit"]["Wants"]).split()


def test_firmware_unit_allows_the_usb_devices_reading_input_devices_and_the_tun_device_only():
    svc = parse_unit(UNITS_DIR / "tenantprint-firmware.service")["Service"]
    assert svc["DevicePolicy"] == ["closed"]
    # /dev/net/tun: a sandbox's charon with the libipsec backend makes its ipsec0 there
    assert svc["DeviceAllow"] == ["char-usb_device rw", "char-input r", "/dev/net/tun rw", "/dev/tpmrm0 rw"]


def _reader_setup(tmp_path: Path, kind: str, bound: list[str]) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """Run the script against a fake /run, a fake sysfs with `bound` pn533_usb interfaces, and a
    systemctl that records its arguments."""
    run, sysfs = tmp_path / "run", tmp_path / "sys"
    run.mkdir()
    drivers = sysfs / "bus/usb/drivers"
    (drivers / "port100").mkdir(parents=True)
    (drivers / "port100/unbind").write_text("")
    pn533 = drivers / "pn533_usb"
    pn533.mkdir()
    (pn533 / "unbind").write_text("")
    (pn533 / "module").mkdir()  # not an interface: left alone
    for iface in bound:
        (pn533 / iface).mkdir()
    shim = tmp_path / "systemctl"
    shim.write_text(SYSTEMCTL_SHIM)
    shim.chmod(0o755)
    conf = tmp_path / "firmware.toml"
    conf.write_text(f'[card]\nkind = "{kind}"\n')
    env = {**os.environ, "TENANTPRINT": str(VENV_TENANTPRINT), "TP_FIRMWARE_CONFIG": str(conf),
           "TP_RUN_DIR": str(run), "TP_SYSFS": str(sysfs), "SYSTEMCTL": str(shim),
           "SHIM_LOG": str(tmp_path / "systemctl.log")}
    proc = subprocess.run([str(READER_SETUP)], env=env, capture_output=True, text=True, timeout=60)
    return proc, run, tmp_path


def test_reader_setup_for_nfcpy_blacklists_unbinds_and_masks_pcscd(tmp_path):
    proc, run, tmp = _reader_setup(tmp_path, "nfcpy", ["1-1.2:1.0"])
    assert proc.returncode == 0, proc.stderr
    conf = (run / "modprobe.d/tenantprint-nfc.conf").read_text()
    assert {line for line in conf.splitlines() if not line.startswith("#")} == {"blacklist pn533_usb",
                                                                                 "blacklist port100"}
    assert (tmp / "sys/bus/usb/drivers/pn533_usb/unbind").read_text() == "1-1.2:1.0"
    assert (tmp / "sys/bus/usb/drivers/port100/unbind").read_text() == ""
    calls = (tmp / "systemctl.log").read_text().splitlines()
    assert calls == ["mask --runtime pcscd.socket", "stop --no-block pcscd.socket pcscd.service"]
    assert not list((run / "modprobe.d").glob("*.tmp"))


def test_reader_setup_for_pcsc_unmasks_pcscd_and_keeps_the_kernel_nfc_drivers_off(tmp_path):
    proc, run, tmp = _reader_setup(tmp_path, "pcsc", [])
    assert proc.returncode == 0, proc.stderr
    assert "blacklist pn533_usb" in (run / "modprobe.d/tenantprint-nfc.conf").read_text()
    assert (tmp / "sys/bus/usb/drivers/pn533_usb/unbind").read_text() == ""
    calls = (tmp / "systemctl.log").read_text().splitlines()
    assert calls == ["unmask --runtime pcscd.socket", "start --no-block pcscd.socket"]


def test_reader_setup_fails_on_a_bad_config_without_touching_anything(tmp_path):
    proc, run, tmp = _reader_setup(tmp_path, "carrier-pigeon", ["1-1.2:1.0"])
    assert proc.returncode != 0
    assert not (run / "modprobe.d").exists() and not (tmp / "systemctl.log").exists()
    assert (tmp / "sys/bus/usb/drivers/pn533_usb/unbind").read_text() == ""


# -- the operation panel: the web panel service and the kiosk (issue 15) ---------------------

PANEL_UNITS = ("tenantprint-panel.service", "tenantprint-kiosk.service")
PANEL_URL = "http://127.0.0.1:8650/"
# measured with systemd 252 (`systemd-analyze security --offline`): panel 1.3, kiosk 2.2 (a browser
# needs the GPU, user namespaces for its own sandbox and a JIT)
PANEL_MAX_EXPOSURE = {"tenantprint-panel.service": 1.5, "tenantprint-kiosk.service": 2.5}
# What the panel units run that build_root() does not hold: stand-ins, as for `tenantprint`.
PANEL_BINARIES = ("opt/tenantprint/venv/bin/python", "usr/bin/bash", "usr/bin/cage", "usr/bin/chromium")


def _panel_root(root: Path, units_dir: Path = UNITS_DIR) -> Path:
    """build_root() plus the panel units' binaries (empty executables: verify checks they exist)."""
    build_root(root, units_dir)
    (root / "bin").symlink_to("usr/bin")
    for rel in PANEL_BINARIES:
        stand_in = root / rel
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def panel_root(tmp_path_factory) -> Path:
    need_binary("systemd-analyze")
    return _panel_root(tmp_path_factory.mktemp("panel-root"))


@pytest.mark.parametrize("unit", PANEL_UNITS)
def test_panel_unit_verifies(panel_root, unit):
    proc = verify(panel_root, unit)
    assert proc.returncode == 0 and not complaints(proc), proc.stdout + proc.stderr


def test_panel_unit_verify_fails_without_cage(tmp_path):
    need_binary("systemd-analyze")
    root = _panel_root(tmp_path / "root")
    (root / "usr/bin/cage").unlink()
    proc = verify(root, "tenantprint-kiosk.service")
    assert proc.returncode != 0 and "/usr/bin/cage" in proc.stderr


@pytest.mark.parametrize("unit", PANEL_UNITS)
def test_panel_unit_security_exposure(panel_root, unit):
    score = _exposure(panel_root, unit)
    assert score <= PANEL_MAX_EXPOSURE[unit], f"{unit}: exposure {score}"


def test_panel_service_contract_and_hardening():
    u = parse_unit(UNITS_DIR / "tenantprint-panel.service")
    svc = u["Service"]
    assert svc["ExecStart"] == ["/opt/tenantprint/venv/bin/python -m hal.panel --socket /run/tenantprint/panel.sock "
                                "--listen 127.0.0.1:8650"]
    assert svc["DynamicUser"] == ["yes"] and svc["SupplementaryGroups"] == ["tenantprint-panel"]
    assert "PrivateUsers" not in svc  # it would unmap the socket's group (systemd #41994)
    # A dynamic user named apart from every sysusers name: by default it would be the unit's name,
    # tenantprint-panel, the static group's, and systemd refuses that (217/USER)
    sysusers = (UNITS_DIR / "sysusers.d/tenantprint.conf").read_text().split()
    assert svc["User"] == ["tp-panel"] and "tp-panel" not in sysusers
    assert svc["CapabilityBoundingSet"] == [""] and svc["AmbientCapabilities"] == [""]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateIPC", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
                "ProtectHostname", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
                "MemoryDenyWriteExecute", "RemoveIPC"):
        assert svc[key] == ["yes"], key
    assert svc["ProtectSystem"] == ["strict"] and svc["PrivateNetwork"] == ["no"]
    assert set(svc["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert svc["IPAddressAllow"] == ["localhost"] and svc["IPAddressDeny"] == ["any"]
    assert svc["MemoryMax"] and svc["MemorySwapMax"] == ["0"] and svc["LimitCORE"] == ["0"]
    assert svc["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert svc["Restart"] == ["on-failure"]
    assert "tenantprint-firmware.service" in u["Unit"]["After"][0].split()
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def test_panel_service_options_exist_in_its_cli():
    argv = shlex.split(parse_unit(UNITS_DIR / "tenantprint-panel.service")["Service"]["ExecStart"][0])
    assert argv[1:3] == ["-m", "hal.panel"]
    proc = subprocess.run([sys.executable, "-m", "hal.panel", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for opt in (a for a in argv[3:] if a.startswith("--")):
        assert re.search(rf"(^|[\s\[,]){re.escape(opt)}\b", proc.stdout), f"python -m hal.panel has no {opt}"


def _readiness_check(port: int, tries: int | None = None) -> list[str]:
    """The panel unit's ExecStartPost, aimed at `port` (and fewer tries)."""
    svc = parse_unit(UNITS_DIR / "tenantprint-panel.service")["Service"]
    [post] = svc["ExecStartPost"]
    argv = shlex.split(post.replace("8650", str(port)))
    assert argv[0] == "/bin/bash" and "$" not in post  # a "$" would be a systemd specifier to escape
    if tries is not None:
        argv[-1] = argv[-1].replace("{1..300}", f"{{1..{tries}}}")
    return argv


def test_panel_service_counts_as_started_once_it_listens():
    import socket

    need_binary("/bin/bash")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        closed = subprocess.run(_readiness_check(port, tries=3), capture_output=True, text=True, timeout=30)
        assert closed.returncode == 1 and "not listening" in closed.stderr
        listener.listen()
        started = subprocess.run(_readiness_check(port), capture_output=True, text=True, timeout=30)
        assert started.returncode == 0, started.stderr


def _kiosk_argv() -> list[str]:
    return shlex.split(parse_unit(UNITS_DIR / "tenantprint-kiosk.service")["Service"]["ExecStart"][0])


def test_kiosk_unit_runs_chromium_in_cage_on_the_panel_url_with_a_tmpfs_profile():
    u = parse_unit(UNITS_DIR / "tenantprint-kiosk.service")
    svc, unit = u["Service"], u["Unit"]
    argv = _kiosk_argv()
    assert argv[:3] == ["/usr/bin/cage", "--", "/usr/bin/chromium"]
    flags = argv[3:]
    for flag in ("--kiosk", f"--app={PANEL_URL}", "--incognito", "--disk-cache-size=1", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--noerrdialogs", "--disable-translate", "--disable-features=Translate",
                 "--ozone-platform=wayland"):
        assert flag in flags, flag
    assert "--no-sandbox" not in flags
    listen = shlex.split(parse_unit(UNITS_DIR / "tenantprint-panel.service")["Service"]["ExecStart"][0])
    assert f"http://{listen[listen.index('--listen') + 1]}/" == PANEL_URL
    # the profile and every XDG directory on the unit's RuntimeDirectory (/run is a tmpfs)
    runtime = "/run/" + svc["RuntimeDirectory"][0]
    [profile] = [f.split("=", 1)[1] for f in flags if f.startswith("--user-data-dir=")]
    assert profile.startswith(runtime + "/")
    env = dict(pair.split("=", 1) for line in svc["Environment"] for pair in shlex.split(line))
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        assert env[var] == runtime or env[var].startswith(runtime + "/"), var
    assert svc["RuntimeDirectoryMode"] == ["0700"] and "RuntimeDirectoryPreserve" not in svc
    assert svc["User"] == ["tenantprint-kiosk"] and svc["PAMName"] == ["tenantprint-kiosk"]
    assert svc["TTYPath"] == ["/dev/tty1"] and svc["StandardInput"] == ["tty-fail"]
    assert svc["Restart"] == ["always"] and unit["StartLimitIntervalSec"] == ["0"]
    after = " ".join(unit["After"]).split()
    assert "tenantprint-panel.service" in after and "getty@tty1.service" in after
    assert unit["Wants"] == ["tenantprint-panel.service"] and unit["Conflicts"] == ["getty@tty1.service"]
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def test_kiosk_unit_hardening():
    svc = parse_unit(UNITS_DIR / "tenantprint-kiosk.service")["Service"]
    assert svc["IPAddressAllow"] == ["localhost"] and svc["IPAddressDeny"] == ["any"]
    assert svc["CapabilityBoundingSet"] == [""] and svc["NoNewPrivileges"] == ["yes"]
    assert svc["ProtectSystem"] == ["strict"] and svc["ProtectHome"] == ["yes"] and svc["PrivateTmp"] == ["yes"]
    assert svc["ReadWritePaths"] == ["-/run/user"]  # logind's XDG_RUNTIME_DIR: cage's Wayland socket
    # Chromium's own sandbox: user, pid and net namespaces and nothing more; V8 needs W+X memory
    assert set(svc["RestrictNamespaces"][0].split()) == {"user", "pid", "net"}
    assert "MemoryDenyWriteExecute" not in svc
    assert svc["DevicePolicy"] == ["closed"]
    assert svc["DeviceAllow"] == ["/dev/tty1 rw", "char-drm rw", "char-input r"]
    assert "SupplementaryGroups" not in svc  # no video/render/input group: devices come from logind
    assert "AF_PACKET" not in svc["RestrictAddressFamilies"][0]
    assert int(svc["OOMScoreAdjust"][0]) > 0 and svc["MemoryMax"] and svc["LimitCORE"] == ["0"]
    for key in ("PrivateIPC", "PrivateMounts", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictRealtime", "RestrictSUIDSGID",
                "LockPersonality", "RemoveIPC"):
        assert svc[key] == ["yes"], key


def test_panel_accounts_are_made_by_sysusers(tmp_path):
    need_binary("systemd-sysusers")
    conf = tmp_path / "etc/sysusers.d/tenantprint.conf"
    conf.parent.mkdir(parents=True)
    shutil.copy2(UNITS_DIR / "sysusers.d/tenantprint.conf", conf)
    proc = subprocess.run(["systemd-sysusers", f"--root={tmp_path}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    users = {f[0]: f for f in (line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines())}
    groups = {f[0]: f for f in (line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines())}
    kiosk = users["tenantprint-kiosk"]
    assert int(kiosk[2]) < 1000 and kiosk[6] == "/usr/sbin/nologin"
    runtime = parse_unit(UNITS_DIR / "tenantprint-kiosk.service")["Service"]["RuntimeDirectory"][0]
    assert kiosk[5] == f"/run/{runtime}"
    assert "tenantprint-panel" in groups and groups["tenantprint-panel"][3] == ""  # no member: only the unit's
    assert set(users) == {"tenantprint-kiosk"}
    shadow = (tmp_path / "etc/shadow").read_text()
    assert re.search(r"^tenantprint-kiosk:!", shadow, re.M)  # no password


def test_kiosk_pam_session_only_registers_with_logind():
    lines = [line.split() for line in (UNITS_DIR / "pam.d/tenantprint-kiosk").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert ["auth", "required", "pam_deny.so"] in lines and ["password", "required", "pam_deny.so"] in lines
    assert ["session", "required", "pam_systemd.so"] in lines
    assert not [line for line in lines if line[0] == "auth" and line[2] != "pam_deny.so"]


def test_kiosk_browser_policy_allows_only_the_panel():
    import json

    policy = json.loads((UNITS_DIR / "chromium/tenantprint-kiosk.json").read_text())
    assert policy["URLBlocklist"] == ["*"] and policy["URLAllowlist"] == [PANEL_URL.rstrip("/")]
    assert policy["DeveloperToolsAvailability"] == 2 and policy["IncognitoModeAvailability"] == 2
    assert policy["DownloadRestrictions"] == 3 and policy["AllowFileSelectionDialogs"] is False


def test_image_installs_and_enables_the_panel_units(tmp_path):
    """The image recipe puts the panel's files where the units expect them, makes the accounts and
    enables both units (replayed here with `systemctl --root`; tests/unit/test_image_recipe.py checks
    the whole recipe)."""
    need_binary("systemctl")
    recipe = REPO / "provisioning/image"
    host = (recipe / "build-image").read_text()
    for src, dst in (("sysusers.d/tenantprint.conf", "etc/sysusers.d/tenantprint.conf"),
                     ("pam.d/tenantprint-kiosk", "etc/pam.d/tenantprint-kiosk"),
                     ("chromium/tenantprint-kiosk.json", "etc/chromium/policies/managed/tenantprint-kiosk.json")):
        assert f'("systemd/{src}", "{dst}")' in host, src
    chroot = (recipe / "hooks/30-system.sh").read_text()
    assert "systemd-sysusers /etc/sysusers.d/tenantprint.conf" in chroot.splitlines()
    [enable] = [line for line in chroot.splitlines() if "tenantprint-panel.service" in line]
    assert enable.split()[:2] == ["systemctl", "enable"] and "tenantprint-kiosk.service" in enable.split()
    packages = {line.split("#")[0].strip() for f in (recipe / "packages").iterdir() for line in f.read_text().splitlines()
                if line.split("#")[0].strip()}
    assert {"cage", "chromium", "fonts-noto-cjk", "libgl1-mesa-dri", "libpam-systemd"} <= packages
    assert "chromium-sandbox" not in packages
    nr = {line.split("#")[0].strip() for line in (recipe / "packages/device-nr").read_text().splitlines()
          if line.split("#")[0].strip()}
    assert "chromium" in nr  # without its Recommends (printer tools, desktop helpers)

    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in PANEL_UNITS:
        shutil.copy2(UNITS_DIR / unit, root / "etc/systemd/system" / unit)
    proc = subprocess.run(["systemctl", f"--root={root}", *enable.split()[1:]], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for unit in PANEL_UNITS:
        assert (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink(), unit
