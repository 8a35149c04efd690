"""provisioning/image: the recipe's static files are right, without building anything.

build-image is loaded as a module (it is a script without .py). Checked: the package lists (no lab
package, no swap, nothing waiting for NTP), which units the system hook enables and masks (replayed
with `systemctl --root` on the repository's units), the files staged into the root (units, helpers,
modes, no key), the read-only root's fstab, the hardening drop-ins, the lab layer's separation and
that the cache key follows exactly what goes into the image.
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

from image_recipe import build_image_module
from prereq import need_binary

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "provisioning/image"
ROOTFS = RECIPE / "rootfs"
SYSTEM_HOOK = RECIPE / "hooks/30-system.sh"
LAB_LAYER = RECIPE / "lab-layer"


bi = build_image_module()


def _systemctl_lines(verb: str) -> list[str]:
    units = []
    for line in SYSTEM_HOOK.read_text().splitlines():
        words = line.split("2>/dev/null")[0].split("||")[0].split()
        if words[:2] == ["systemctl", verb]:
            units += [w for w in words[2:] if not w.startswith("-")]
    return units


def _base_packages() -> set[str]:
    return {p for step in bi.apt_steps("twin") + bi.apt_steps("pi") if step.command == "install"
            for p in step.packages}


def test_no_lab_package_and_no_swap_in_the_device_lists():
    device = _base_packages()
    assert not {p for p in device if "vpcd" in p or "vsmartcard" in p}
    assert not {p for p in device if "swap" in p or "zram" in p}
    assert "systemd-time-wait-sync" not in device and "charon-systemd" not in device
    lab = set(bi.packages_file(LAB_LAYER / "packages"))
    assert not lab & device, "a lab layer package is in the device's lists"
    purged = {p for s in bi.apt_steps("twin") if s.command == "purge" and "build-deps" not in s.origin
              for p in s.packages}
    assert "vsmartcard-vpcd" in purged


def test_targets_differ_only_in_the_kernel():
    pi, twin = bi.apt_steps("pi"), bi.apt_steps("twin")
    assert [s.packages for s in pi[1:]] == [s.packages for s in twin[1:]]
    extra_pi = set(pi[0].packages) - set(twin[0].packages)
    extra_twin = set(twin[0].packages) - set(pi[0].packages)
    assert extra_pi == {"linux-image-arm64", "raspi-firmware"} and extra_twin == {"linux-image-amd64"}


def test_the_system_hook_enables_every_device_unit_and_no_ntp_wait():
    enabled = set(_systemctl_lines("enable"))
    shipped = {u.name: u for u in [*bi.device_units(), *(ROOTFS / "etc/systemd/system").glob("*.service")]}
    with_install = {n for n, u in shipped.items() if "[Install]" in u.read_text()}
    assert with_install <= enabled, f"device units not enabled: {sorted(with_install - enabled)}"
    assert {"systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service", "ssh.service",
            "pcscd.socket"} <= enabled
    assert "systemd-time-wait-sync.service" not in enabled
    assert not {"tenantprint-cloud.service", "tenantprint-gateway-agent.service",
                "tenantprint-desk-agent.service"} & (enabled | set(shipped))
    masked = set(_systemctl_lines("mask"))
    assert {"strongswan.service", "strongswan-starter.service", "ipsec.service", "cups.service", "cups.socket",
            "cups.path", "cups-browsed.service", "avahi-daemon.service", "avahi-daemon.socket", "swap.target",
            "systemd-firstboot.service"} <= masked


def test_the_enables_replay_on_the_shipped_units(tmp_path):
    """`systemctl --root` enables the repository's units as the hook does (their [Install] is right)."""
    need_binary("systemctl")
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in [*bi.device_units(), *(ROOTFS / "etc/systemd/system").glob("*.service")]:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    ours = [u for u in _systemctl_lines("enable") if u.startswith("tenantprint-")]
    proc = subprocess.run(["systemctl", f"--root={root}", "enable", *ours], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    wants = root / "etc/systemd/system"
    for unit in ("tenantprint-firmware.service", "tenantprint-enrol.service", "tenantprint-ssh-setup.service",
                 "tenantprint-selfcheck.service", "tenantprint-panel.service", "tenantprint-kiosk.service"):
        assert (wants / "multi-user.target.wants" / unit).is_symlink(), unit
    for unit in ("tenantprint-reader-setup.service", "tenantprint-boot-guard.service"):
        assert (wants / "sysinit.target.wants" / unit).is_symlink(), unit


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("stage")
    wheel = work / "tenantprint-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("firmware/__init__.py", "")
    (work / "cache").mkdir()
    return bi.stage_tree(work, "pi", wheel, work / "cache")


def test_the_staged_tree(staged):
    system = staged / "etc/systemd/system"
    assert {u.name for u in bi.device_units()} <= {u.name for u in system.glob("*.service")}
    assert not (system / "tenantprint-cloud.service").exists()
    for helper in (REPO / "systemd/libexec").iterdir():
        assert (staged / "opt/tenantprint/libexec" / helper.name).stat().st_mode & stat.S_IXUSR, helper.name
    assert (staged / "etc/sysctl.d/90-tenantprint.conf").read_bytes() == \
        (REPO / "systemd/sysctl.d/90-tenantprint.conf").read_bytes()
    assert stat.S_IMODE((staged / "etc/sudoers.d/tenantprint-admin").stat().st_mode) == 0o440
    assert (staged / "etc/default/raspi-firmware").exists()  # the Pi's own settings, Pi only
    assert (staged / "etc/chromium/policies/managed/tenantprint-kiosk.json").exists()
    assert (staged / "etc/pam.d/tenantprint-kiosk").exists() and (staged / "etc/sysusers.d/tenantprint.conf").exists()
    names = [p.relative_to(staged).as_posix() for p in staged.rglob("*")]
    assert not [n for n in names if "vpcd" in n or "/ssh_host_" in n or n.endswith(("enrolment.json", "/token",
                                                                                   ".key", ".pem"))]
    key = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
    assert not [n for n in names if (staged / n).is_file() and key.search((staged / n).read_bytes())]


def test_read_only_root_and_its_writable_places():
    rows = [line.split() for line in (ROOTFS / "etc/fstab").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    mounts = {r[1]: r for r in rows}
    assert mounts["/"][0] == f"LABEL={bi.ROOT_LABEL}" and mounts["/"][3].split(",")[0] == "ro"
    for path in ("/tmp", "/var/tmp", "/var/log", "/var/ipp-usb"):
        assert mounts[path][2] == "tmpfs", path
    assert mounts["/var/persist"][0] == f"LABEL={bi.STATE_LABEL}" and "noexec" in mounts["/var/persist"][3]
    assert mounts["/var/lib/tenantprint"][0] == "/var/persist/tenantprint" and "bind" in mounts["/var/lib/tenantprint"][3]
    assert mounts["/var/lib/systemd/timesync"][0] == "/var/persist/timesync"
    assert mounts["/boot/firmware"][0] == f"LABEL={bi.BOOT_LABEL}" and "nofail" in mounts["/boot/firmware"][3]
    assert "swap" not in [r[2] for r in rows]


def test_hardening_files():
    assert "Storage=volatile" in (ROOTFS / "etc/systemd/journald.conf.d/tenantprint.conf").read_text()
    watchdog = (ROOTFS / "etc/systemd/system.conf.d/tenantprint-watchdog.conf").read_text()
    assert re.search(r"^RuntimeWatchdogSec=\d+s?$", watchdog, re.M)
    sshd = (ROOTFS / "etc/ssh/sshd_config.d/tenantprint.conf").read_text().splitlines()
    for line in ("PermitRootLogin no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                 "AllowTcpForwarding no"):
        assert line in sshd
    assert [line for line in sshd if line.startswith("HostKey /var/persist/ssh/")]
    assert "kernel.core_pattern=|/bin/false" in (ROOTFS / "etc/sysctl.d/50-tenantprint-coredump.conf").read_text()
    network = (ROOTFS / "etc/systemd/network/20-ethernet.network").read_text()
    assert "DHCP=yes" in network and "UseNTP=yes" in network
    names = re.search(r"^Name=(.+)$", network, re.M).group(1).split()
    assert not [n for n in names if re.fullmatch(n.replace("*", ".*"), "tpv0")], "networkd would take a sandbox veth"
    networkd = (ROOTFS / "etc/systemd/networkd.conf.d/tenantprint.conf").read_text()
    assert "ManageForeignRoutes=no" in networkd and "ManageForeignRoutingPolicyRules=no" in networkd
    resolved = (ROOTFS / "etc/systemd/resolved.conf.d/tenantprint.conf").read_text()
    assert "LLMNR=no" in resolved and "MulticastDNS=no" in resolved
    hook = SYSTEM_HOOK.read_text()
    assert "rm -f /etc/ssh/ssh_host_*" in hook and ": > /etc/machine-id" in hook


def test_the_firmware_config_in_the_image_is_valid():
    from firmware import config as fwconfig

    cfg = fwconfig.load(ROOTFS / "etc/tenantprint/firmware.toml", required=True)
    assert cfg.tunnel.backend == "kernel" and cfg.device.device_id == ""


def test_the_pi_image_never_takes_a_layer(tmp_path, capsys):
    layer = tmp_path / "layer"
    layer.mkdir()
    with pytest.raises(SystemExit):
        bi.main(["--target", "pi", "--layer", str(layer), "--cache", str(tmp_path / "cache"), "--key-only"])
    assert "twin only" in capsys.readouterr().err


def test_a_layer_with_unknown_entries_is_refused(tmp_path, capsys):
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    with pytest.raises(SystemExit):
        bi.main(["--target", "twin", "--layer", str(layer), "--cache", str(tmp_path / "cache"), "--key-only"])
    assert "unknown entries" in capsys.readouterr().err


def test_the_cache_key_follows_the_inputs(tmp_path, capsys):
    layer = tmp_path / "layer"
    (layer / "overlay/etc").mkdir(parents=True)
    (layer / "packages").write_text("# nothing\n")
    base = bi.cache_key("twin", [], bi.MIRROR)
    assert base == bi.cache_key("twin", [], bi.MIRROR), "the key is stable"
    assert base != bi.cache_key("pi", [], bi.MIRROR)
    with_layer = bi.cache_key("twin", [layer], bi.MIRROR)
    assert with_layer != base
    (layer / "overlay/etc/lab.conf").write_text("x\n")
    assert bi.cache_key("twin", [layer], bi.MIRROR) != with_layer, "a layer's content is in the key"
    (layer / "overlay/etc/lab.conf").chmod(0o755)
    assert bi.cache_key("twin", [layer], bi.MIRROR) != with_layer
    # The key-only answer: JSON on stdout, nothing built.
    assert bi.main(["--target", "twin", "--cache", str(tmp_path / "cache"), "--key-only"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer == {"dir": str(tmp_path / "cache" / f"twin-{base[:16]}"), "cached": False, "key": base,
                      "target": "twin"}
    assert not (tmp_path / "cache").exists()


def test_the_key_covers_the_firmware_sources_not_the_readme(tmp_path, monkeypatch):
    """The wheel is keyed by its sources (pyproject, the packages), not by the repository's README."""
    fake = tmp_path / "repo"
    shutil.copytree(REPO / "provisioning/image", fake / "provisioning/image",
                    ignore=shutil.ignore_patterns("lab-layer", "__pycache__"))
    (fake / "systemd").mkdir()
    (fake / "docs").mkdir()
    (fake / "docs/RASPBERRY-PI.md").write_text("guide\n")
    for name in bi.WHEEL_SOURCES:
        if name.endswith(".toml"):
            (fake / name).write_text("[project]\n")
        else:
            (fake / name).mkdir()
            (fake / name / "__init__.py").write_text("")
    (fake / "README.md").write_text("one\n")
    monkeypatch.setattr(bi, "REPO", fake)
    monkeypatch.setattr(bi, "RECIPE", fake / "provisioning/image")
    key = bi.cache_key("twin", [], bi.MIRROR)
    (fake / "README.md").write_text("two\n")
    assert bi.cache_key("twin", [], bi.MIRROR) == key
    (fake / "hal/__pycache__").mkdir()
    (fake / "hal/__pycache__/x.cpython-311.pyc").write_bytes(b"\0")
    assert bi.cache_key("twin", [], bi.MIRROR) == key
    (fake / "hal/__init__.py").write_text("# changed\n")
    assert bi.cache_key("twin", [], bi.MIRROR) != key


def test_the_helper_scripts_lint_clean():
    need_binary("shellcheck")
    scripts = [*sorted((RECIPE / "hooks").glob("*.sh")), ROOTFS / "opt/tenantprint/libexec/tenantprint-ssh-setup"]
    for script in scripts:
        assert script.read_text().startswith("#!/bin/bash -e\n"), script
        assert os.access(script, os.X_OK), script
    proc = subprocess.run(["shellcheck", "-s", "bash", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


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


def test_printer_path_announces_nothing():
    ipp_usb = _settings((ROOTFS / "etc/ipp-usb/ipp-usb.conf").read_text())
    assert ipp_usb[("network", "dns-sd")] == "disable" and ipp_usb[("network", "interface")] == "loopback"
    # ipp-usb's shipped default traces all USB traffic (the documents) into /var/log.
    assert ipp_usb[("logging", "device-log")] == "error" and ipp_usb[("logging", "main-log")] == "error"
    avahi = _settings((ROOTFS / "etc/avahi/avahi-daemon.conf").read_text())
    assert avahi[("publish", "disable-publishing")] == "yes"
    assert avahi[("server", "allow-interfaces")] == "lo" and avahi[("wide-area", "enable-wide-area")] == "no"
    debconf = (RECIPE / "debconf").read_text()
    assert re.search(r"^cups\s+cupsys/backend\s+multiselect\s+.*\busb\b", debconf, re.M)
    assert not re.search(r"^cups\s+cupsys/backend\s+multiselect\s+.*\b(snmp|dnssd)\b", debconf, re.M)


def test_units_verify_in_the_staged_root(staged, tmp_path):
    """The device's units pass `systemd-analyze verify` in a root laid out as the image's."""
    need_binary("systemd-analyze", "/usr/sbin/nft")
    root = tmp_path / "root"
    shutil.copytree(staged, root, symlinks=True)
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    (root / "lib").symlink_to("usr/lib")
    venv = root / "opt/tenantprint/venv/bin"
    venv.mkdir(parents=True)
    for name in ("tenantprint", "python"):  # stand in for the venv the image's hook makes
        shutil.copy2(Path(sys.executable).parent / name, venv / name)
    (root / "usr/sbin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/sbin/nft", root / "usr/sbin/nft")
    shutil.copy2("/lib/systemd/systemd-sysctl", root / "usr/lib/systemd/systemd-sysctl")
    units = ["tenantprint-firmware.service", "tenantprint-enrol.service", "tenantprint-boot-guard.service",
             "tenantprint-ssh-setup.service", "tenantprint-selfcheck.service", "tenantprint-reader-setup.service"]
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True)
    assert proc.returncode == 0 and "tenantprint" not in proc.stderr, proc.stderr


def test_the_wheel_holds_no_testbed_and_no_secret(tmp_path):
    """The wheel build-image installs: the firmware's packages, no lab/ or tests/, no key, no lab secret."""
    wheel = bi.build_wheel(tmp_path)
    canary = re.compile(rb"TPCANARY-\w+-\w+-[0-9a-f]{32}")  # the lab's org secrets (lab/orgs.py)
    # a private key is a PEM block with its body (code may name the header: hal/tpm reads TSS2 ones)
    key = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n(?:[A-Za-z0-9-]+: [^\n]*\n)*\r?\n?[A-Za-z0-9+/=]{40}")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert not [n for n in names if n.startswith(("lab/", "tests/"))], "testbed code in the wheel"
        assert {n.split("/")[0] for n in names} >= {"firmware", "hal", "tenantprint"}
        for n in names:
            blob = z.read(n)
            assert not key.search(blob) and not canary.search(blob), n


def test_every_hook_refuses_to_run_outside_the_image_root():
    """The hooks delete and rewrite system paths: each starts with the guard that makes it refuse
    unless build-image started it in the image's root (its token in the environment and the root)."""
    for hook in sorted((RECIPE / "hooks").glob("*.sh")):
        code = [line for line in hook.read_text().splitlines()[1:] if line.strip() and not line.startswith("#")]
        assert code[0].startswith('if [[ -z ${TP_IMAGE_BUILD:-} || "$(cat /var/tmp/tp-hooks/IMAGE-ROOT'), hook.name
        assert code[2] == "    exit 1", hook.name
    text = (RECIPE / "build-image").read_text()
    assert '"var/tmp/tp-hooks/IMAGE-ROOT").write_text(BUILD_TOKEN)' in text and "TP_IMAGE_BUILD={BUILD_TOKEN}" in text


def test_an_image_with_an_identity_is_refused(tmp_path):
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/machine-id").write_text("")
    bi.check_no_identity(root)  # an empty machine-id is what the image ships
    (root / "etc/ssl/private").mkdir(parents=True)
    (root / "etc/ssl/private/ssl-cert-snakeoil.key").write_text("k")
    with pytest.raises(SystemExit, match="ssl-cert-snakeoil.key"):
        bi.check_no_identity(root)
    (root / "etc/ssl/private/ssl-cert-snakeoil.key").unlink()
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    with pytest.raises(SystemExit, match="machine-id"):
        bi.check_no_identity(root)
