"""The device's IKE/TLS key inside a TPM 2.0 (issue 18), against a real swtpm behind tpm2-abrmd
(lab/services/swtpm.py on `office`), real charons and a real FreeRADIUS.

- the key is made inside the TPM; the file on the "SD card" is a reference: no key cryptography or
  OpenSSL can load without that TPM; a CSR signed in the TPM is one the cloud's device CA takes;
  `firmware.device_cert.ensure` keeps a certificate for it (and refuses one for another key);
- IKEv2 with it: the MFP's charon (its `tpm` plugin, `load-token` by handle) opens acme's tunnel
  (gateway from org/gateway_config in certificate mode); purge leaves charon holding nothing;
- RadSec with it: the TLS client certificate's signature made in the TPM, accepted by FreeRADIUS;
- several processes at once on the one TPM: two charons holding the key while CSRs are signed;
- the reference file elsewhere: a charon without the TPM, or with a TPM of its own, opens nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from prereq import need_binary

from hal.tpm import read_ref
from hal.tunnel import TunnelConfig, TunnelSetupFailed, open_tunnel
from lab.orgs import DEVICE_ID
from lab.services.charon import VICI, GatewayService
from lab.services.swtpm import SwtpmService, tpm_charon
from test_tunnel_device_cert import make_ca

TOOLS = ("/usr/bin/swtpm", "/usr/sbin/tpm2-abrmd", "/usr/bin/tpm2_create", "/usr/bin/dbus-daemon",
         "/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so", "/usr/lib/ipsec/plugins/libstrongswan-tpm.so")


def _now():
    return dt.datetime.now(dt.timezone.utc)


def make_space_ca():
    return make_ca("space-1 device CA")


def certify(ca, csr_pem: str, device_id: str = DEVICE_ID) -> str:
    """What the space's device CA does with a CSR (cloud/device_ca.py): its key, 24 h, the device's name."""
    from cloud.device_ca import csr_public_key

    ca_cert, ca_key = ca
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(ca_cert.subject).public_key(csr_public_key(csr_pem))
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(hours=24))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(device_id)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def tpm(lab):
    need_binary(*TOOLS)
    svc = SwtpmService("office")
    svc.start(lab)
    yield svc
    svc.stop(lab)


@pytest.fixture(scope="module")
def space_ca():
    return make_space_ca()


@pytest.fixture(scope="module")
def device(lab, tpm, space_ca, tmp_path_factory):
    """The device's state dir with its key made in the TPM and a certificate for it."""
    from hal.tpm import keys

    state = tmp_path_factory.mktemp("tpm-state")
    config = tpm.config(lab)
    t0 = time.perf_counter()
    assert keys.make_key(state / "ike.key", config) is True
    made_ms = (time.perf_counter() - t0) * 1000
    ref = read_ref(state / "ike.key")
    t0 = time.perf_counter()
    csr_pem = keys.csr(ref, DEVICE_ID)
    csr_ms = (time.perf_counter() - t0) * 1000
    (state / "device-cert.pem").write_text(certify(space_ca, csr_pem))
    (state / "space-ca.pem").write_bytes(space_ca[0].public_bytes(serialization.Encoding.PEM))
    print(f"\nTPM key made in {made_ms:.0f} ms, CSR signed in the TPM in {csr_ms:.0f} ms")
    return state


# -- the key and its certificate ------------------------------------------------------------------

def test_the_key_is_made_in_the_tpm_and_the_file_is_only_a_reference(lab, tpm, device):
    from cloud.device_ca import csr_public_key
    from hal.tpm import keys

    key = device / "ike.key"
    text = key.read_text()
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert "BEGIN TSS2 PRIVATE KEY" in text and "BEGIN PRIVATE KEY" not in text and "EC PRIVATE KEY" not in text
    with pytest.raises((ValueError, TypeError)):
        serialization.load_pem_private_key(text.encode(), password=None)
    ref = read_ref(key)
    assert ref.handle == 0x81010002 and ref.config == tpm.config(lab)
    # the TPM holds it at its handle, the same key as the blob's; the CSR is the cloud's kind
    spki = keys.public_key_der(ref)
    req = keys.csr(ref, DEVICE_ID)
    got = csr_public_key(req).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert got == spki
    assert x509.load_pem_x509_csr(req.encode()).is_signature_valid
    # made once: a second call changes nothing
    assert keys.make_key(key, ref.config) is False and key.read_text() == text


class SpaceCa:
    """The cloud's certificate endpoint as firmware.device_cert.ensure sees it."""

    def __init__(self, ca, wrong_key: bool = False):
        self.ca, self.wrong_key, self.requests = ca, wrong_key, 0

    def device_certificate(self, csr_pem: str):
        from types import SimpleNamespace

        self.requests += 1
        if self.wrong_key:  # an answer for another key than the CSR's
            other = ec.generate_private_key(ec.SECP256R1())
            csr_pem = (x509.CertificateSigningRequestBuilder()
                       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE_ID)]))
                       .sign(other, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
        return SimpleNamespace(certificate_pem=certify(self.ca, csr_pem),
                               ca_pem=self.ca[0].public_bytes(serialization.Encoding.PEM).decode())


def test_ensure_keeps_a_certificate_for_the_tpm_key(lab, tpm, space_ca, tmp_path):
    from firmware.config import from_dict
    from firmware.device_cert import CURRENT, FAILED, REJECTED, RENEWED, ensure

    cfg = from_dict({"device": {"state_dir": str(tmp_path), "device_id": DEVICE_ID, "key_store": "tpm",
                                "tpm_tcti": tpm.config(lab).tcti, "tpm_dbus": tpm.config(lab).dbus_address,
                                "tpm_handle": "0x81010005"}})
    now = time.time()
    assert ensure(cfg, SpaceCa(space_ca, wrong_key=True), now).status == REJECTED  # not-our-key
    assert read_ref(tmp_path / "ike.key").handle == 0x81010005
    first = ensure(cfg, SpaceCa(space_ca), now)
    assert (first.status, first.usable) == (RENEWED, True), first
    cloud = SpaceCa(space_ca)
    assert ensure(cfg, cloud, now + 60).status == CURRENT and cloud.requests == 0
    # a key file in place while the config says tpm: not used (it would stay on the SD card)
    (tmp_path / "ike.key").unlink()
    serialization_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ike.key").write_bytes(serialization_key)
    state = ensure(cfg, SpaceCa(space_ca), now)
    assert (state.status, state.reason) == (FAILED, "file-key-in-tpm-mode")


# -- IKE ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def charons(lab, tpm, space_ca):
    need_binary("/usr/lib/ipsec/charon", "/usr/sbin/swanctl", "nft")
    mfp = tpm_charon("tpm-mfp-charon", "office", tpm)
    pem = space_ca[0].public_bytes(serialization.Encoding.PEM).decode()
    gw = GatewayService("acme", backend=mfp.backend(), device_ca_pem=pem)
    for svc in (mfp, gw):
        svc.start(lab)
    yield mfp, gw
    for svc in (gw, mfp):
        svc.stop(lab)


def device_profile(lab):
    from hal.directory.profile import SessionProfile
    from lab.orgs import gateway_ca, lab_profile

    wire = lab_profile(lab, "acme")
    wire["vpn"].update(auth="device", ca_cert_pem=gateway_ca(lab, "acme").cert_pem())
    del wire["vpn"]["psk"]
    return SessionProfile.from_wire(wire)


def tunnel_on(lab, svc, host: str, state: Path):
    return open_tunnel(TunnelConfig(backend=svc.backend(), vici_socket=str(svc.vici_socket(lab)),
                                    netns=lab.host(host).ns, device_cert=str(state / "device-cert.pem"),
                                    device_key=str(state / "ike.key")))


def established(lab) -> list[str]:
    out = lab.host("gw-acme").run(["swanctl", "--list-sas", "--uri", f"unix://{VICI}"]).stdout.decode()
    return [line.split("@")[1].split("[")[0].strip() for line in out.splitlines()
            if line.strip().startswith("remote ") and "@" in line]


def test_the_tunnel_comes_up_with_the_key_in_the_tpm_and_purge_leaves_nothing(lab, charons, device):
    mfp, _ = charons
    tun = tunnel_on(lab, mfp, "office", device)
    try:
        t0 = time.perf_counter()
        up = tun.up(device_profile(lab), timeout=15)
        print(f"\nIKE up with the TPM key in {(time.perf_counter() - t0) * 1000:.0f} ms")
        assert up.virtual_ip.startswith("10.20.0.")
        assert tun.inventory()["keys"], "the token key is loaded"
        log = (lab.layout.logs_dir / "tpm-mfp-charon.log").read_text()
        assert "loaded ECDSA private key from token" in log or "TPM 2.0" in log
        assert established(lab) == ["10.77.0.10"]
    finally:
        tun.purge()
    inv = tun.inventory()
    assert inv["keys"] == [] and inv["sas"] == [] and inv["certs"] == 0 and inv["conns"] == []


def test_several_processes_use_the_one_tpm_at_once(lab, tpm, charons, device):
    """The MFP's charon with its tunnel up, a second charon loading the same key, and the firmware
    signing CSRs, all at the same time (tpm2-abrmd in front of swtpm: /dev/tpmrm0 on a Pi)."""
    from hal.tpm import keys

    mfp, _ = charons
    second = tpm_charon("tpm-second-charon", "cowork", tpm)  # stands for a second session's sandbox
    second.start(lab)
    tun = tunnel_on(lab, mfp, "office", device)
    errors: list[BaseException] = []
    ref = read_ref(device / "ike.key")

    def sign_many():
        try:
            for _ in range(5):
                keys.csr(ref, DEVICE_ID)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    try:
        signers = [threading.Thread(target=sign_many) for _ in range(2)]
        for t in signers:
            t.start()
        tun.up(device_profile(lab), timeout=20)
        import socket
        import vici
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(second.vici_socket(lab)))
        try:
            res = vici.Session(s).load_token({"handle": ref.token_handle})
            assert res["success"] == b"yes"
        finally:
            s.close()
        for t in signers:
            t.join(60)
        assert errors == []
        assert tun.inventory()["sas"]
    finally:
        tun.purge()
        second.stop(lab)


def test_the_reference_file_elsewhere_opens_nothing(lab, charons, device, tmp_path):
    """The files copied to the coworking host: without the MFP's TPM, charon has no key to sign
    with, with a TPM of the thief's own neither."""
    loot = tmp_path / "loot"
    loot.mkdir()
    for f in device.iterdir():
        (loot / f.name).write_bytes(f.read_bytes())
    no_tpm = tpm_charon("thief-charon", "cowork", None)
    own = SwtpmService("cowork")
    no_tpm.start(lab)
    try:
        tun = tunnel_on(lab, no_tpm, "cowork", loot)
        with pytest.raises(TunnelSetupFailed) as err:
            tun.up(device_profile(lab), timeout=10)
        assert err.value.cause == "config" and "TPM" in str(err.value)
        tun.purge()
    finally:
        no_tpm.stop(lab)
    own.start(lab)
    with_own = tpm_charon("thief-charon", "cowork", own)
    with_own.start(lab)
    try:
        tun = tunnel_on(lab, with_own, "cowork", loot)
        with pytest.raises(TunnelSetupFailed) as err:
            tun.up(device_profile(lab), timeout=10)
        assert err.value.cause == "config"
        tun.purge()
        # the thief's TPM cannot load the blob either (its storage seed is not the MFP's)
        proc = subprocess.run(["openssl", "pkey", "-provider", "tpm2", "-provider", "base", "-in",
                               str(loot / "ike.key"), "-pubout"], capture_output=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", **own.config(lab).env()})
        assert proc.returncode != 0 and b"PUBLIC KEY" not in proc.stdout
    finally:
        with_own.stop(lab)
        own.stop(lab)
    assert "10.77.0.20" not in established(lab)


# -- RadSec ---------------------------------------------------------------------------------------

def test_radsec_with_the_key_in_the_tpm(lab, tpm, device, space_ca, tmp_path):
    import test_radsec as rs
    from hal.auth import Accepted
    from hal.auth.radsec import RadsecAuthenticator
    from hal.directory.profile import AuthServerProfile
    from org.radius_config import RadsecListener

    need_binary(rs.FREERADIUS)
    org = rs.make_ca("acme RADIUS CA")
    import ipaddress
    server_pair = rs.write_pair(tmp_path, "server", *rs.issue(org, "radius.acme", x509.IPAddress(
        ipaddress.ip_address("127.0.0.1")), ExtendedKeyUsageOID.SERVER_AUTH))
    (tmp_path / "space-ca.pem").write_bytes(space_ca[0].public_bytes(serialization.Encoding.PEM))
    pki = {"server": server_pair, "space_ca": str(tmp_path / "space-ca.pem")}
    cfg = rs.org_radius(pki, rs.free_tcp_port(), radsec=RadsecListener(
        certificate_file=server_pair[0], private_key_file=server_pair[1], ca_file=pki["space_ca"],
        port=rs.free_tcp_port(), allowed_clients=(DEVICE_ID,), check_crl=False))
    srv = rs.Server(tmp_path / "conf", cfg)
    srv.start()
    try:
        prof = AuthServerProfile("radsec", "127.0.0.1", cfg.radsec.port, 2.0,
                                 ca_pem=rs.pem(org[1]).decode(), retries=1)
        # the same with the key in a file, for comparison (median of 5 handshakes each)
        soft = ec.generate_private_key(ec.SECP256R1())
        soft_csr = (x509.CertificateSigningRequestBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE_ID)]))
                    .sign(soft, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
        (tmp_path / "soft.pem").write_text(certify(space_ca, soft_csr))
        (tmp_path / "soft.key").write_bytes(soft.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        medians, exchanges = {}, {}
        for label, cert, key in (("file", tmp_path / "soft.pem", tmp_path / "soft.key"),
                                 ("tpm", device / "device-cert.pem", device / "ike.key"),
                                 ("file-after", tmp_path / "soft.pem", tmp_path / "soft.key")):
            times = []
            for _ in range(5):
                a = RadsecAuthenticator(prof, client_cert=str(cert), client_key=str(key), min_timeout_s=2.0)
                t0 = time.perf_counter()
                a.warm()
                times.append((time.perf_counter() - t0) * 1000)
                assert a._kept is not None, label
                t0 = time.perf_counter()
                assert a.authenticate("bob", "acme", pin="2468") == Accepted("bob")
                exchanges.setdefault(label, []).append((time.perf_counter() - t0) * 1000)
                a.close()
            medians[label] = sorted(times)[2]
        print(f"\nRadSec handshake (context, connect, TLS), median of 5: key in a file {medians['file']:.0f} ms, "
              f"in the TPM {medians['tpm']:.0f} ms; then a PIN exchange {sorted(exchanges['file'])[2]:.1f} ms "
              f"and {sorted(exchanges['tpm'])[2]:.1f} ms; file again {sorted(exchanges['file-after'])[2]:.1f}")
        auth = RadsecAuthenticator(prof, client_cert=str(device / "device-cert.pem"),
                                   client_key=str(device / "ike.key"), min_timeout_s=2.0)
        t0 = time.perf_counter()
        auth.warm()
        warm_ms = (time.perf_counter() - t0) * 1000
        assert auth._kept is not None and auth._kept.version() in ("TLSv1.2", "TLSv1.3")
        version = auth._kept.version()
        t0 = time.perf_counter()
        out = auth.authenticate("alice", "acme", proof=rs.proof(rs.ALICE_CARD, 1))
        print(f"\nRadSec ({version}): handshake with the TPM key {warm_ms:.0f} ms, then an exchange "
              f"{(time.perf_counter() - t0) * 1000:.1f} ms")
        t0 = time.perf_counter()
        again = auth.authenticate("bob", "acme", pin="2468")
        print(f"RadSec: a second exchange on the kept connection {(time.perf_counter() - t0) * 1000:.1f} ms")
        auth.close()
        assert out == Accepted("alice"), (out, srv.output()[-1500:].decode(errors="replace"))
        # answered at all: the server took the certificate of the TPM key (the space CA's, naming
        # DEVICE_ID, its only allowed client: a request over another device's connection gets none)
        assert again == Accepted("bob"), again
    finally:
        srv.stop()
