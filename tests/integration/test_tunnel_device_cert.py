"""The tunnel in device-certificate mode (issue 18), against real charons: the MFP's on `office`
shows its own certificate from the coworking space's device CA, acme's gateway (`gw-acme`, config
from org/gateway_config.py in certificate mode) shows its certificate from acme's gateway CA, and
the profile the MFP gets holds no secret of acme's.

Attacks, as in the pen test: a copied device key and certificate on the coworking host (`cowork`)
cannot take over the MFP's IKE SA (`unique = keep`); a certificate of another CA, a certificate for
another identity and a revoked certificate (the space CA's CRL, loaded by the gateway) open nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from prereq import need_binary

from hal.directory.profile import SessionProfile
from hal.tunnel import TunnelConfig, TunnelSetupFailed, open_tunnel
from lab.orgs import CANARY_MARK, DEVICE_ID, gateway_ca, lab_profile
from lab.poll import wait_for
import vici

from org.gateway_agent import GatewayAgent
from org.gateway_crl import check_crl, load_crl
from lab.services.charon import VICI, GatewayService, MfpCharonService


def _now():
    return dt.datetime.now(dt.timezone.utc)


def make_ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def device_cert(ca, identity: str, *, hours: int = 24):
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(hours=hours))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def write_identity(d, name: str, cert, key) -> tuple[str, str]:
    cert_path, key_path = d / f"{name}.pem", d / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class CoworkCharon(MfpCharonService):
    """An attacker's charon on the coworking host, with whatever it copied."""

    name = "cowork-charon"
    host_name = "cowork"


@pytest.fixture(scope="module")
def space_ca():
    return make_ca("space-1 device CA")


@pytest.fixture(scope="module")
def charons(lab, space_ca):
    need_binary("/usr/lib/ipsec/charon", "/usr/sbin/swanctl", "nft")
    mfp = MfpCharonService()
    pem = space_ca[0].public_bytes(serialization.Encoding.PEM).decode()
    gw = GatewayService("acme", backend=mfp.backend(), device_ca_pem=pem)
    cowork = CoworkCharon(backend=mfp.backend())
    for svc in (mfp, gw, cowork):
        svc.start(lab)
    yield mfp, gw, cowork
    for svc in (cowork, gw, mfp):
        svc.stop(lab)


def device_profile(lab) -> SessionProfile:
    wire = lab_profile(lab, "acme")
    wire["vpn"].update(auth="device", ca_cert_pem=gateway_ca(lab, "acme").cert_pem())
    del wire["vpn"]["psk"]
    return SessionProfile.from_wire(wire)


def established(lab) -> list[str]:
    """The remote hosts of the IKE SAs acme's gateway has up."""
    out = lab.host("gw-acme").run(["swanctl", "--list-sas", "--uri", f"unix://{VICI}"]).stdout.decode()
    hosts, up = [], False
    for line in out.splitlines():
        if not line.startswith(" "):  # an IKE SA's first line
            up = ", ESTABLISHED," in line
        elif up and (m := re.match(r"\s+remote '[^']*' @ ([0-9.]+)", line)):
            hosts.append(m.group(1))
            up = False
    return sorted(hosts)


def tunnel_on(lab, svc, host: str, cert: str, key: str):
    return open_tunnel(TunnelConfig(backend=svc.backend(), vici_socket=str(svc.vici_socket(lab)),
                                    netns=lab.host(host).ns, device_cert=cert, device_key=key))


def test_the_device_certificate_opens_acme_and_a_copy_does_not_take_over(lab, charons, space_ca, tmp_path):
    mfp, gw, cowork = charons
    prof = device_profile(lab)
    # the profile of the certificate mode holds nothing secret: no secret field, no canary
    assert prof.vpn.secrets() == [] and prof.vpn.psk is None
    assert CANARY_MARK not in str(prof.to_wire()["vpn"])
    cert, key = write_identity(tmp_path, "device", *device_cert(space_ca, DEVICE_ID))
    tun = tunnel_on(lab, mfp, "office", cert, key)
    try:
        up = tun.up(prof, timeout=15)
        assert up.virtual_ip.startswith("10.20.0.2")
        # the device's key and certificate, copied to the coworking host: a second IKE SA with the
        # device's identity does not take over: the gateway agent ends it, the first stays
        agent = GatewayAgent(str(gw.vici_socket(lab)), ("127.0.0.1", 0), conn_prefix="mfp-", reconcile_s=0.5,
                             one_sa_per_device=True)
        threading.Thread(target=agent._follow, daemon=True).start()
        try:
            thief = tunnel_on(lab, cowork, "cowork", cert, key)
            try:
                try:
                    thief.up(prof, timeout=10)
                except TunnelSetupFailed:
                    pass  # ended before its virtual IP came up
                wait_for(lambda: agent.duplicates_ended, 10, "the duplicate ended")
                assert agent.duplicates_ended[0]["remote_host"] == "10.77.0.20"
                wait_for(lambda: established(lab) == ["10.77.0.10"], 10, "only the MFP's SA")
            finally:
                thief.purge()
        finally:
            agent._stop.set()  # its HTTP side never served: only its follower ran
            agent.http.server_close()
        assert tun.inventory()["sas"], "the MFP's SA is still up"
        # and acme's LAN still reaches the MFP through it
        wait_for(lambda: lab.host("lan-acme").run(["ping", "-c", "1", "-W", "1", up.virtual_ip],
                                                  check=False).returncode == 0, 10, "the MFP reachable")
    finally:
        tun.purge()
    inv = tun.inventory()
    assert inv["keys"] == [] and inv["certs"] == 0 and inv["sas"] == []


@pytest.mark.parametrize("case", ["other CA", "other identity"])
def test_certificates_the_gateway_must_not_take(lab, charons, space_ca, tmp_path, case):
    mfp, _, _ = charons
    ca = make_ca("someone else's CA") if case == "other CA" else space_ca
    ident = DEVICE_ID if case == "other CA" else "mfp-2.space-1"
    cert, key = write_identity(tmp_path, "device", *device_cert(ca, ident))
    prof = device_profile(lab)
    if case == "other identity":  # the certificate is good, but names another device than the profile's
        wire = prof.to_wire()
        wire["vpn"]["local_id"] = ident
        prof = SessionProfile.from_wire(wire)
    tun = tunnel_on(lab, mfp, "office", cert, key)
    try:
        with pytest.raises(TunnelSetupFailed) as err:
            tun.up(prof, timeout=10)
        assert err.value.cause in ("auth", "rejected", "timeout")
    finally:
        tun.purge()


def test_a_revoked_device_certificate_opens_nothing(lab, charons, space_ca, tmp_path):
    mfp, gw, _ = charons
    ca_cert, ca_key = space_ca
    dev_cert, dev_key = device_cert(space_ca, DEVICE_ID)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(_now() - dt.timedelta(minutes=1)).next_update(_now() + dt.timedelta(hours=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(dev_cert.serial_number)
                                    .revocation_date(_now() - dt.timedelta(minutes=1)).build())
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
           .add_extension(x509.CRLNumber(1), critical=False)
           .sign(ca_key, hashes.SHA256()))
    # as the gateway agent loads it (org/gateway_crl.py): checked against the space CA, then VICI
    der = crl.public_bytes(serialization.Encoding.DER)
    check_crl(der, ca_cert.public_bytes(serialization.Encoding.PEM))
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(gw.vici_socket(lab)))
    try:
        load_crl(vici.Session(sock), der)
    finally:
        sock.close()
    cert, key = write_identity(tmp_path, "device", dev_cert, dev_key)
    tun = tunnel_on(lab, mfp, "office", cert, key)
    try:
        with pytest.raises(TunnelSetupFailed):
            tun.up(device_profile(lab), timeout=10)
    finally:
        tun.purge()
    # another certificate of the same device, not on the CRL, still opens the tunnel
    cert, key = write_identity(tmp_path, "device2", *device_cert(space_ca, DEVICE_ID))
    tun = tunnel_on(lab, mfp, "office", cert, key)
    try:
        tun.up(device_profile(lab), timeout=15)
    finally:
        tun.purge()
