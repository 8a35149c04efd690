"""provisioning/: the scripts lint clean; first-boot enrolment and org onboarding work.

The image recipe itself (provisioning/image) is checked by tests/unit/test_image_recipe.py and its
package list by tests/integration/test_image_packages.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from prereq import need_binary

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*REPO.glob("provisioning/**/*.sh"), REPO / "systemd/libexec/tenantprint-first-boot",
                  REPO / "systemd/libexec/tenantprint-reader-setup"])
TENANTPRINT = Path(sys.executable).parent / "tenantprint"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck(script):
    need_binary("shellcheck")
    proc = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_are_bash_e_and_executable(script):
    assert script.read_text().startswith("#!/bin/bash -e\n")
    assert script.stat().st_mode & stat.S_IXUSR


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
