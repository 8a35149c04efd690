"""A stolen SD card when the MFP keeps its IKE/TLS key in a TPM 2.0 (issue 18, `lab up --tpm`).

The MFP (firmware on `office`, its TPM: swtpm behind tpm2-abrmd, lab/services/swtpm.py) made its
certificate key inside the TPM and got its certificate from the space's device CA in the cloud, as
at first boot. The thief copies every file of the device's state dir (what the SD card holds) to
the coworking host. Expected:
- no file holds a private key OpenSSL or `cryptography` can load; `ike.key` is a TSS2 blob wrapped
  by the MFP's TPM plus its handle;
- with those files, no tunnel into acme comes up from the coworking host: a charon without a TPM
  has no key to sign with; a charon with a TPM of the thief's own has none either (the handle holds
  nothing there), and that TPM cannot load the blob; acme's gateway never has an SA from cowork;
- the same files with the MFP's TPM do open acme (the files are good: it is the TPM that is
  missing); in the lab a charon on cowork can reach that TPM (its broker's socket is a file), which
  a thief could not reach on a Pi's board.
The cloud-signing key `device.key` is a P-256 key in the same TPM (a TPM has no Ed25519): the
copied reference signs no lookup without it (tests/integration/test_tpm_cloud_key.py).

One lab of its own (prefix `TP_TPM_LAB_PREFIX`, default `tpk`), brought up with `--tpm` and taken
down at the end, nothing of it left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from lab_cli import run_lab_cli
from prereq import need_binary, need_root

from hal.tpm import TpmKeyError, TpmKeyRef, read_ref
from hal.tunnel import TunnelConfig, TunnelSetupFailed, open_tunnel
from lab.poll import wait_for
from lab.services.charon import VICI
from lab.services.swtpm import SwtpmService, tpm_charon

PREFIX = os.environ.get("TP_TPM_LAB_PREFIX", "tpk")
COWORK, MFP = "10.77.0.20", "10.77.0.10"


def lab_cli(*args: str, timeout: float = 300) -> dict:
    return run_lab_cli(PREFIX, *args, timeout=timeout)


@pytest.fixture(scope="module")
def tpm_lab():
    need_root()
    need_binary("charon-systemd", "cupsd", "ippeveprinter", "pcscd", "freeradius", "nft", "swanctl",
                "/usr/bin/swtpm", "/usr/sbin/tpm2-abrmd", "/usr/bin/tpm2_create",
                "/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so", "/usr/lib/ipsec/plugins/libstrongswan-tpm.so")
    from lab.lab import Lab
    from lab.layout import LabLayout

    subprocess.run([sys.executable, "-m", "tenantprint", "lab", "down"], env=dict(os.environ, TP_LAB_PREFIX=PREFIX),
                   capture_output=True)
    lab_cli("up", "--tpm")
    base = Path(os.environ.get("TP_LAB_DIR", "/var/tmp/tenantprint-lab"))
    the_lab = Lab(layout=LabLayout(prefix=PREFIX, root=base / PREFIX))
    yield the_lab
    down = lab_cli("down")
    assert down["leftovers"] == {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}


def _profile(lab):
    """acme's profile as the cloud hands it to the device in certificate mode (no secret in it)."""
    from hal.directory.profile import SessionProfile
    from lab.orgs import lab_profile

    prof = SessionProfile.from_wire(lab_profile(lab, "acme", trust="cert"))
    assert prof.vpn.auth == "device" and prof.vpn.secrets() == []
    return prof


def _established(lab) -> list[str]:
    out = lab.host("gw-acme").run(["swanctl", "--list-sas", "--uri", f"unix://{VICI}"]).stdout.decode()
    return sorted(line.split("@")[1].split("[")[0].strip() for line in out.splitlines()
                  if line.strip().startswith("remote ") and "@" in line)


def _try_tunnel(lab, charon, loot: Path):
    tun = open_tunnel(TunnelConfig(backend=charon.backend(), vici_socket=str(charon.vici_socket(lab)),
                                   netns=lab.host(charon.host_name).ns, device_cert=str(loot / "device-cert.pem"),
                                   device_key=str(loot / "ike.key")))
    try:
        return tun.up(_profile(lab), timeout=10)
    finally:
        tun.purge()
        inv = tun.inventory()
        assert inv["keys"] == [] and inv["sas"] == [] and inv["conns"] == []


def test_every_file_of_the_sd_card_on_the_coworking_host_opens_no_tunnel(tpm_lab):
    lab = tpm_lab
    from hal.tpm import keys

    # the MFP made its key in the TPM and has a certificate for it from the space's CA
    status = wait_for(lambda: (s := lab_cli("status"))["firmware"].get("device_cert", {}).get("usable") and s,
                      60, "the device certificate")
    assert status["firmware"]["tpm"]["running"]
    state = lab.service("firmware").data_dir(lab) / "state"
    ref = read_ref(state / "ike.key")
    assert ref is not None and ref.handle == 0x81010002
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((state / "device-cert.pem").read_bytes())
    assert cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) == keys.public_key_der(ref)

    # the SD card: every file of the state dir, on the coworking host
    loot = lab.host("cowork").path("/tmp/loot")
    loot.mkdir(parents=True, exist_ok=True)
    for f in state.iterdir():
        if f.is_file():
            shutil.copy2(f, loot / f.name)
    assert {"ike.key", "device-cert.pem", "device.key", "enrolment.json"} <= {p.name for p in loot.iterdir()}
    assert "BEGIN TSS2 PRIVATE KEY" in (loot / "device.key").read_text()  # the cloud key is in the TPM too
    for f in loot.iterdir():
        text = f.read_text(errors="replace")
        if "PRIVATE KEY" in text:  # ike.key and device.key (the cloud key): references into the TPM only
            assert "BEGIN TSS2 PRIVATE KEY" in text and "BEGIN PRIVATE KEY" not in text, f.name
            with pytest.raises((ValueError, TypeError)):
                serialization.load_pem_private_key(text.encode(), password=None)
    assert MFP not in _established(lab) and COWORK not in _established(lab)

    # 1. a charon without a TPM: no key to sign with
    bare = tpm_charon("thief-charon", "cowork", None)
    bare.start(lab)
    try:
        with pytest.raises(TunnelSetupFailed) as err:
            _try_tunnel(lab, bare, loot)
        assert err.value.cause == "config" and "TPM" in str(err.value)
    finally:
        bare.stop(lab)
    assert COWORK not in _established(lab)

    # 2. a TPM of the thief's own: the handle holds nothing, the blob does not load
    own = SwtpmService("cowork")
    own.start(lab)
    armed = tpm_charon("thief-charon", "cowork", own)
    armed.start(lab)
    try:
        with pytest.raises(TunnelSetupFailed) as err:
            _try_tunnel(lab, armed, loot)
        assert err.value.cause == "config"
        proc = subprocess.run(["openssl", "pkey", "-provider", "tpm2", "-provider", "base", "-in",
                               str(loot / "ike.key"), "-pubout"], capture_output=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", **own.config(lab).env()})
        assert proc.returncode != 0 and b"PUBLIC KEY" not in proc.stdout
        theirs = own.config(lab)
        with pytest.raises(TpmKeyError):
            keys.public_key_der(TpmKeyRef(loot / "ike.key", ref.handle, theirs.tcti, theirs.dbus_address))
    finally:
        armed.stop(lab)
        own.stop(lab)
    assert COWORK not in _established(lab)

    # 3. control: the same files with the MFP's TPM open acme's tunnel (the TPM is what was missing).
    # Only the lab lets cowork reach that TPM (its broker's socket lies on the shared file system;
    # the office host's own stack may not send IKE: the device firewall lets only sandboxes out)
    home = tpm_charon("control-charon", "cowork", SwtpmService("office"))
    home.start(lab)
    try:
        try:
            up = _try_tunnel(lab, home, loot)
        except TunnelSetupFailed as exc:
            # seen once in ~10 CI runs with another lab up beside this one: the gateway answered
            # AUTHENTICATION_FAILED to the first try (not understood yet); the control must come up
            # on a second try, or the test fails
            print(f"control tunnel, first try: {exc}")
            time.sleep(2)
            up = _try_tunnel(lab, home, loot)
        assert up.virtual_ip.startswith("10.20.0.")
    finally:
        home.stop(lab)
