"""provisioning/: the scripts lint clean, and the pi-gen stage lays out an image that is right.

The stage's host-side scripts (`NN-run.sh`) run here for real against a stand-in for stage2's
root filesystem, exactly as pi-gen runs them (cwd = the sub-stage, ROOTFS_DIR set). The chroot
scripts need a Raspberry Pi OS chroot with apt; their `systemctl` lines are replayed with
`systemctl --root`, the rest is inspected. Then the tree is checked: units enabled, swap off,
no vpcd, no keys or identity.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from firmware import config as fwconfig
from prereq import need, need_binary

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "provisioning/pi-gen/stage-tenantprint"
SCRIPTS = sorted([*REPO.glob("provisioning/**/*.sh"), REPO / "systemd/libexec/tenantprint-first-boot",
                  REPO / "systemd/libexec/tenantprint-reader-setup"])
CHROOT_SCRIPTS = sorted(STAGE.glob("*/*-run-chroot.sh"))
TENANTPRINT = Path(sys.executable).parent / "tenantprint"
# Units Raspberry Pi OS's stage2 provides that a Debian build machine lacks.
PI_OS_UNITS = ("regenerate_ssh_host_keys.service", "ssh.service")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck(script):
    need_binary("shellcheck")
    proc = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_are_bash_e_and_executable(script):
    assert script.read_text().startswith("#!/bin/bash -e\n")
    assert script.stat().st_mode & stat.S_IXUSR


def _package_lists() -> list[str]:
    return [line.strip() for f in STAGE.glob("*/*-packages*") for line in f.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_packages_have_what_the_device_needs_and_no_vpcd():
    pkgs = set(" ".join(_package_lists()).split())
    # strongswan-charon: /usr/lib/ipsec/charon, which the firmware starts in each sandbox; swanctl's
    # package has the vici plugin, the plugin packages kernel-libipsec, openssl and curve25519.
    assert {"strongswan-charon", "strongswan-swanctl", "libcharon-extra-plugins", "libstrongswan-standard-plugins",
            "libstrongswan-extra-plugins", "cups-daemon", "pcscd", "libccid", "nftables", "python3-venv"} <= pkgs
    assert "charon-systemd" not in pkgs  # nothing runs strongswan.service on the device
    # The engine path (replayed with apt in tests/integration/test_image_packages.py).
    assert {"cups", "cups-filters", "ghostscript", "ipp-usb", "avahi-daemon"} <= pkgs
    assert not {p for p in pkgs if "vpcd" in p or "vsmartcard" in p or "swap" in p or "zram" in p}
    purges = " ".join(CHROOT_SCRIPTS[0].read_text().split("\n"))
    assert re.search(r"apt-get purge -y [^\n]*vsmartcard-vpcd", purges)
    assert not re.search(r"apt-get purge[^\n]*avahi-daemon", purges), "it would purge ipp-usb too"
    assert not re.search(r"apt-get purge[^\n]*strongswan-starter", purges), "it would purge strongswan-charon too"


def test_chroot_scripts_turn_swap_off():
    text = "\n".join(p.read_text() for p in CHROOT_SCRIPTS)
    assert "apt-get purge -y dphys-swapfile" in text
    assert "systemctl mask swap.target" in text


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> Path:
    """The stage applied to a stand-in for stage2's rootfs, as pi-gen would."""
    need_binary("systemctl")
    tmp = tmp_path_factory.mktemp("pigen")
    stage = tmp / "stage-tenantprint"
    shutil.copytree(STAGE, stage)
    proc = subprocess.run([str(REPO / "provisioning/build-wheel.sh"), str(stage / "01-tenantprint/files")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    root = tmp / "rootfs"
    for d in ("etc/systemd/system", "etc/ssh/sshd_config.d", "etc/sysctl.d", "usr/lib/systemd"):
        (root / d).mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    for unit in (u for u in PI_OS_UNITS if not (root / "usr/lib/systemd/system" / u).exists()):
        (root / "usr/lib/systemd/system" / unit).write_text(
            "[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")

    env = {**os.environ, "ROOTFS_DIR": str(root)}
    for sub in sorted(p for p in stage.iterdir() if p.is_dir()):
        for script in sorted(sub.glob("[0-9][0-9]-run.sh")):
            proc = subprocess.run([str(script)], cwd=sub, env=env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
        for script in sorted(sub.glob("[0-9][0-9]-run-chroot.sh")):
            for line in script.read_text().splitlines():
                if re.match(r"^\s*systemctl (enable|disable|mask) ", line):
                    words = line.split("||")[0].split()
                    proc = subprocess.run(["systemctl", f"--root={root}", *words[1:]],
                                          capture_output=True, text=True, timeout=60)
                    assert proc.returncode == 0, f"{line}: {proc.stderr}"
    return root


def test_build_wheel_refuses_without_a_wheel(tmp_path):
    stage = tmp_path / "stage"
    shutil.copytree(STAGE, stage)
    env = {**os.environ, "ROOTFS_DIR": str(tmp_path / "rootfs")}
    proc = subprocess.run([str(stage / "01-tenantprint/00-run.sh")], cwd=stage / "01-tenantprint", env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "build-wheel.sh" in proc.stderr


def test_units_installed_and_enabled(rootfs):
    system = rootfs / "etc/systemd/system"
    wants = system / "multi-user.target.wants"
    for unit in ("tenantprint-firmware.service", "tenantprint-enrol.service"):
        assert (wants / unit).is_symlink(), unit
    # Each session's charon is the firmware's own, in its sandbox: no charon in the device's domain.
    for unit in ("strongswan.service", "strongswan-starter.service", "ipsec.service"):
        assert os.readlink(system / unit) == "/dev/null", f"{unit} not masked"
    assert not (system / "strongswan.service.d").exists()
    for unit in ("tenantprint-reader-setup.service", "tenantprint-boot-guard.service"):
        assert (system / "sysinit.target.wants" / unit).is_symlink(), unit
    assert (rootfs / "etc/sysctl.d/90-tenantprint.conf").read_text() == (REPO / "systemd/sysctl.d/90-tenantprint.conf").read_text()
    assert os.readlink(system / "swap.target") == "/dev/null"
    assert not (wants / "cups.service").exists() and not (system / "sockets.target.wants/cups.socket").exists()
    # The system cupsd would take the per-session cupsd's port; avahi would listen on the LAN.
    for unit in ("cups.service", "cups.socket", "cups.path", "cups-browsed.service", "avahi-daemon.service",
                 "avahi-daemon.socket"):
        assert os.readlink(system / unit) == "/dev/null", f"{unit} not masked"
    for name in ("tenantprint-first-boot", "tenantprint-reader-setup"):  # each unit's ExecStart is there
        helper = rootfs / "opt/tenantprint/libexec" / name
        assert helper.stat().st_mode & stat.S_IXUSR, name


def test_units_verify_in_the_image(rootfs):
    need_binary("systemd-analyze", "/usr/sbin/nft")
    venv = rootfs / "opt/tenantprint/venv/bin"
    venv.mkdir(parents=True)
    shutil.copy2(TENANTPRINT, venv / "tenantprint")  # stands in for the venv the chroot script makes
    (rootfs / "usr/sbin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/sbin/nft", rootfs / "usr/sbin/nft")  # the boot guard, the firmware's ExecStopPost
    (rootfs / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)  # the firmware's ExecStartPre
    shutil.copy2("/lib/systemd/systemd-sysctl", rootfs / "usr/lib/systemd/systemd-sysctl")
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={rootfs}", "tenantprint-firmware.service",
                           "tenantprint-enrol.service", "tenantprint-boot-guard.service"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "tenantprint" not in proc.stderr, proc.stderr


def test_shipped_firmware_config_is_valid(rootfs):
    cfg = fwconfig.load(rootfs / "etc/tenantprint/firmware.toml", required=True)
    assert cfg.tunnel.backend == "kernel" and cfg.device.device_id == ""


def test_no_identity_keys_or_vpcd_in_the_image(rootfs):
    names = [p.relative_to(rootfs).as_posix() for p in rootfs.rglob("*")]
    assert not [n for n in names if "vpcd" in n or "vsmartcard" in n]
    assert not [n for n in names if "/ssh_host_" in n or n.endswith(("enrolment.json", "/token", ".key", ".pem"))]
    assert not (rootfs / "var/lib/tenantprint").exists()
    blobs = [p.read_bytes() for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink()
             and "usr/lib/systemd" not in p.as_posix()]
    wheels = list((rootfs / "opt/tenantprint/wheels").glob("*.whl"))
    assert wheels
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            assert not [n for n in z.namelist() if n.startswith(("lab/", "tests/"))], "testbed code in the wheel"
            blobs += [z.read(n) for n in z.namelist()]
    canary = re.compile(rb"TPCANARY-\w+-\w+-[0-9a-f]{32}")  # the lab's org secrets (lab/orgs.py)
    # a private key is a PEM block with its body (code may name the header: hal/tpm reads TSS2 ones)
    key = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n(?:[A-Za-z0-9-]+: [^\n]*\n)*\r?\n?[A-Za-z0-9+/=]{40}")
    for blob in blobs:
        assert not key.search(blob) and not canary.search(blob)


def _settings(text: str) -> dict[tuple[str, str], str]:
    """(section, key) -> value of an ini-like file (ipp-usb's indents keys and allows `# ...` after values)."""
    section, found = "", {}
    for line in (raw.split("#", 1)[0].strip() for raw in text.splitlines()):
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            key, _, value = line.partition("=")
            found[(section, key.strip())] = value.strip()
    return found


def test_printer_path_announces_nothing(rootfs):
    ipp_usb = _settings((rootfs / "etc/ipp-usb/ipp-usb.conf").read_text())
    assert ipp_usb[("network", "dns-sd")] == "disable" and ipp_usb[("network", "interface")] == "loopback"
    # ipp-usb's shipped default traces all USB traffic (the documents) into /var/log on the SD card.
    assert ipp_usb[("logging", "device-log")] == "error" and ipp_usb[("logging", "main-log")] == "error"
    avahi = _settings((rootfs / "etc/avahi/avahi-daemon.conf").read_text())
    assert avahi[("publish", "disable-publishing")] == "yes"
    assert avahi[("server", "allow-interfaces")] == "lo" and avahi[("wide-area", "enable-wide-area")] == "no"
    debconf = (STAGE / "00-packages/00-debconf").read_text()
    assert re.search(r"^cups\s+cupsys/backend\s+multiselect\s+.*\busb\b", debconf, re.M)


def test_ssh_hardening(rootfs):
    sshd = (rootfs / "etc/ssh/sshd_config.d/tenantprint.conf").read_text()
    for line in ("PermitRootLogin no", "PasswordAuthentication no", "KbdInteractiveAuthentication no"):
        assert line in sshd.splitlines()
    assert "Storage=volatile" in (rootfs / "etc/systemd/journald.conf.d/tenantprint.conf").read_text()


def _first_boot(tmp_path, boot_files: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path, Path]:
    state, boot = tmp_path / "state", tmp_path / "boot"
    boot.mkdir()
    for name, text in boot_files.items():
        (boot / name).write_text(text)
    conf = tmp_path / "firmware.toml"
    conf.write_text(f'[device]\nstate_dir = "{state}"\n')
    env = {**os.environ, "TENANTPRINT": str(TENANTPRINT), "TP_BOOT_DIR": str(boot), "TP_FIRMWARE_CONFIG": str(conf)}
    proc = subprocess.run([str(REPO / "systemd/libexec/tenantprint-first-boot")], env=env,
                          capture_output=True, text=True, timeout=60)
    return proc, state, boot


def test_first_boot_without_a_token_fails_clearly(tmp_path):
    proc, state, _ = _first_boot(tmp_path, {"cloud-url": "https://cloud.example:8443\r\n"})
    assert proc.returncode == 1 and "no enrolment token" in proc.stderr
    assert not (state / "enrolment.json").exists()


def test_first_boot_when_enrolled_does_nothing(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "enrolment.json").write_text(json.dumps({"device_id": "mfp-1.space-1", "cloud_url": "https://c:1"}))
    proc, _, boot = _first_boot(tmp_path, {"token": "t0ken\n"})
    assert proc.returncode == 0 and "already enrolled" in proc.stdout
    assert (boot / "token").exists()  # untouched: it was not used


ORG_SHIM = """#!{python}
# Wraps the real `tenantprint` to record every command line onboard-org.sh runs.
import json, os, subprocess, sys
with open(os.environ["SHIM_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(subprocess.run([{real!r}, *sys.argv[1:]]).returncode)
"""

ACME = {
    "org_id": "acme", "name": "Acme Corp",
    "gateway": {"id": "gw.acme", "wan_address": "203.0.113.10", "lan": "10.20.0.0/24",
                "pool": "10.20.0.200-10.20.0.239", "devices": ["mfp-1.space-1"], "backend": "kernel"},
    "radius": {"host": "10.20.0.50", "users": [{"id": "alice", "kind": "card"},
                                               {"id": "bob", "kind": "pin", "pin": "2468"}]},
}


def test_onboard_org_registers_the_org_without_secrets_on_command_lines(tmp_path):
    shim = tmp_path / "bin/tenantprint"
    shim.parent.mkdir()
    shim.write_text(ORG_SHIM.format(python=sys.executable, real=str(TENANTPRINT)))
    shim.chmod(0o755)
    (tmp_path / "acme.json").write_text(json.dumps(ACME))
    env = {**os.environ, "TENANTPRINT": str(shim), "PYTHON": sys.executable, "SHIM_LOG": str(tmp_path / "argv.log"),
           "TP_CLOUD_DB": f"sqlite:///{tmp_path}/cloud.db", "TP_CLOUD_KEK_FILE": str(tmp_path / "kek")}

    def tp(*args):
        proc = subprocess.run([str(TENANTPRINT), "cloud", *args], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    tp("init-kek")
    tp("space", "add", "space-1")
    out = tmp_path / "acme-out"
    for _ in range(2):  # re-running is safe: same secrets, one contract
        proc = subprocess.run([str(REPO / "provisioning/onboard-org.sh"), str(tmp_path / "acme.json"), str(out),
                               "space-1"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "secrets.json").stat().st_mode) == 0o600
    secrets = json.loads((out / "secrets.json").read_text())
    shown = json.loads(tp("org", "show", "acme", "--json"))
    assert shown["profile"]["version"] == 2 and set(shown["profile"]["secrets_set"])
    assert [c["status"] for c in shown["contracts"]] == ["active"]
    argv_log = (tmp_path / "argv.log").read_text()
    assert "gateway-config" in argv_log and "radius-config" in argv_log
    swanctl = (out / "gateway" / "swanctl.conf").read_text()
    assert "gw.acme" in swanctl and "mfp-1.space-1" in swanctl
    assert stat.S_IMODE((out / "gateway" / "swanctl.conf").stat().st_mode) == 0o600
    assert (out / "radius" / "users").exists() and (out / "radius" / "clients.conf").exists()
    for value in secrets.values():
        assert value not in argv_log and value not in proc.stdout + proc.stderr

    # certificate mode (issue 18): the org's CA made once, the space's device CA from the cloud, no
    # secret in the secrets file or the registered profile, RadSec only at the org's RADIUS server
    (tmp_path / "beta.json").write_text(json.dumps({**ACME, "org_id": "beta", "name": "Beta", "trust": "cert"}))
    beta = tmp_path / "beta-out"
    for _ in range(2):
        proc = subprocess.run([str(REPO / "provisioning/onboard-org.sh"), str(tmp_path / "beta.json"), str(beta),
                               "space-1"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert json.loads((beta / "secrets.json").read_text()) == {}
    assert stat.S_IMODE((beta / "org-ca" / "ca.key").stat().st_mode) == 0o600
    assert (beta / "space-ca.pem").read_text() == tp("space", "ca", "space-1")
    shown = json.loads(tp("org", "show", "beta", "--json"))
    assert shown["profile"]["secrets_set"] == [] and shown["profile"]["public"]["vpn"]["auth"] == "device"
    assert "proto = tls" in (beta / "radius" / "clients.conf").read_text()
    assert "auth = pubkey" in (beta / "gateway" / "swanctl.conf").read_text()
