"""Issue 18, the space's device CA, against the real cloud app on SQLite and PostgreSQL: a device's
signed request gets a 24 h certificate of its space's CA for its own P-256 key and name only; bad
CSRs are refused, unsigned and forged requests are refused and never attributed to the device;
revoking the device puts its certificates on the published CRL (checked by `openssl verify`) and
stops renewal; certificate requests are rate limited per device; the CA key is sealed at rest and
follows a KEK rotation; the firmware's `ensure` keeps a certificate in the state dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi.testclient import TestClient
from prereq import need_binary
from sqlalchemy import text

from hal.directory import DirectoryRefused
from hal.directory.client import load_key
from hal.directory.device_cert import csr, make_key, verify_issued
from hal.directory.signing import sign_headers

PATH = "/v1/device/certificate"


def request_cert(http, device_id: str, key, csr_pem: str, *, body: bytes | None = None, headers: dict | None = None):
    body = json.dumps({"csr_pem": csr_pem}).encode() if body is None else body
    signed = sign_headers(key, device_id, "POST", PATH, body) if headers is None else headers
    return http.post(PATH, content=body, headers={**signed, "Content-Type": "application/json"})


def device_key(tmp_path: Path, name: str = "ike.key") -> Path:
    path = tmp_path / name
    make_key(path)
    return path


def csr_of(key, device_id: str, extra_sans=()) -> str:
    names = [x509.DNSName(device_id), *extra_sans]
    req = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .add_extension(x509.SubjectAlternativeName(names), critical=False)
           .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()))
    return req.public_bytes(serialization.Encoding.PEM).decode()


def cert_events(cloud, device_id: str) -> list[tuple[str, str]]:
    return [(e["action"], e["outcome"]) for e in cloud.admin.audit(device_id=device_id)
            if e["action"] in ("certificate", "anomaly", "revoke")]


def openssl_verify(tmp_path: Path, ca_pem: str, cert_pem: str,
                   crl_der: bytes | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "v-ca.pem").write_text(ca_pem)
    (tmp_path / "v-cert.pem").write_text(cert_pem)
    args = ["openssl", "verify", "-purpose", "sslclient", "-CAfile", tmp_path / "v-ca.pem"]
    if crl_der is not None:
        (tmp_path / "v-crl.der").write_bytes(crl_der)
        subprocess.run(["openssl", "crl", "-inform", "DER", "-in", tmp_path / "v-crl.der", "-out",
                        tmp_path / "v-crl.pem"], check=True, capture_output=True)
        args += ["-crl_check", "-CRLfile", tmp_path / "v-crl.pem"]
    return subprocess.run([*args, tmp_path / "v-cert.pem"], capture_output=True, text=True)


# -- issuing ------------------------------------------------------------------------------------

def test_a_device_gets_a_24h_certificate_of_its_space_ca(cloud, tmp_path):
    need_binary("openssl")
    dev = cloud.enrol()
    key_path = device_key(tmp_path)
    before = time.time()
    issued = cloud.client(dev).device_certificate(csr(key_path, dev.device_id))
    r = cloud.http.get("/v1/spaces/space-1/ca.pem")
    assert r.status_code == 200 and r.headers["cache-control"].startswith("public")
    assert r.text == issued.ca_pem
    ca = x509.load_pem_x509_certificate(r.content)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())

    # the CA: self-signed, for this space, pathlen 0, signs certificates and CRLs only
    ca.verify_directly_issued_by(ca)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "tenantprint space space-1 device CA"
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"

    # the device certificate: signed by it, for this device, its key, 24 h
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == f"CN={dev.device_id}"
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [dev.device_id]
    not_before, not_after = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    assert issued.not_after == not_after and not_after - before <= 24 * 3600 + 1
    assert not_after - not_before == 24 * 3600 + 300  # 5 minutes back for clock skew
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
            == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    assert 0 < cert.serial_number < 2 ** 128
    assert verify_issued(issued.certificate_pem, issued.ca_pem, key_path, dev.device_id, time.time()) == not_after
    result = openssl_verify(tmp_path, issued.ca_pem, issued.certificate_pem)
    assert result.returncode == 0, result.stdout + result.stderr

    # one audit row, no CSR; one certificate row; the CA key is stored sealed
    assert cert_events(cloud, dev.device_id) == [("certificate", "issued")]
    serials = [c["serial"] for c in cloud.app.state.device_ca.certificates(dev.device_id)]
    assert serials == [f"{cert.serial_number:032x}"]
    with cloud.engine.connect() as c:
        audit_text = json.dumps([list(map(str, r)) for r in c.execute(text("SELECT * FROM audit_event"))])
        key_ct, kek_id = c.execute(text("SELECT key_ct, kek_id FROM space_ca WHERE space_id = 'space-1'")).one()
    assert "CERTIFICATE REQUEST" not in audit_text and "MII" not in audit_text
    assert b"PRIVATE KEY" not in bytes(key_ct) and kek_id == cloud.keyring.active_id
    # the other space has its own CA
    other = x509.load_pem_x509_certificate(cloud.http.get("/v1/spaces/space-2/ca.pem").content)
    assert other.public_key() != ca.public_key() and "space-2" in other.subject.rfc4514_string()
    assert cloud.http.get("/v1/spaces/no-such-space/ca.pem").status_code == 404
    assert cloud.http.get("/v1/spaces/no-such-space/crl").json() == {"error": "not-found"}


def test_a_csr_naming_another_device_yields_a_certificate_for_the_signer_only(cloud, tmp_path):
    dev = cloud.enrol()
    cloud.enrol("mfp-2.space-1")
    key = load_key(dev.key_path)
    ike = ec.generate_private_key(ec.SECP256R1())
    asked = csr_of(ike, "mfp-2.space-1", [x509.DNSName("gw.acme"), x509.RFC822Name("root@acme")])
    r = request_cert(cloud.http, dev.device_id, key, asked)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    cert = x509.load_pem_x509_certificate(r.json()["certificate_pem"].encode())
    assert cert.subject.rfc4514_string() == f"CN={dev.device_id}"
    assert list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.DNSName(dev.device_id)]
    assert cert.public_key() == ike.public_key()
    assert cloud.app.state.device_ca.certificates("mfp-2.space-1") == []


def test_the_first_certificate_pins_the_devices_key(cloud, tmp_path):
    """A copied device.key alone gets no certificate: the device's later certificates must be for
    the key of its first (ike.key, never replaced on the device); another key is refused (403) and
    audited as an anomaly."""
    dev = cloud.enrol()
    key = load_key(dev.key_path)
    ike = ec.generate_private_key(ec.SECP256R1())
    assert request_cert(cloud.http, dev.device_id, key, csr_of(ike, dev.device_id)).status_code == 200
    thief = ec.generate_private_key(ec.SECP256R1())
    r = request_cert(cloud.http, dev.device_id, key, csr_of(thief, dev.device_id))
    assert r.status_code == 403
    assert ("anomaly", "ike-key-changed") in cert_events(cloud, dev.device_id)
    assert ("certificate", "ike-key-changed") in cert_events(cloud, dev.device_id)
    assert request_cert(cloud.http, dev.device_id, key, csr_of(ike, dev.device_id)).status_code == 200


def test_csrs_that_are_not_p256_or_not_signed_are_refused(cloud):
    dev = cloud.enrol()
    cloud.app.state.cert_limit.burst = 20.0  # refused requests spend the device's allowance too: not tested here
    key = load_key(dev.key_path)
    p256 = ec.generate_private_key(ec.SECP256R1())
    good = x509.load_pem_x509_csr(csr_of(p256, dev.device_id).encode()).public_bytes(serialization.Encoding.DER)
    forged = good[:-1] + bytes([good[-1] ^ 1])  # the signature's last byte: still a CSR, not a valid one
    forged_pem = x509.load_der_x509_csr(forged).public_bytes(serialization.Encoding.PEM).decode()
    for other in (rsa.generate_private_key(public_exponent=65537, key_size=2048),
                  ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()):
        r = request_cert(cloud.http, dev.device_id, key, csr_of(other, dev.device_id))
        assert (r.status_code, r.json()) == (403, {"error": "refused"}), type(other)
    assert request_cert(cloud.http, dev.device_id, key, forged_pem).status_code == 403
    for body in (b'{"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\\nAAAA\\n-----END CERTIFICATE REQUEST-----"}',
                 b'{"csr_pem": 1}', b'{"csr_pem": "x", "subject": "mfp-2"}', b"[]", b"not json"):
        r = request_cert(cloud.http, dev.device_id, key, "", body=body)
        assert (r.status_code, r.json()) == (422, {"error": "malformed"}), body
    assert cert_events(cloud, dev.device_id) == [("certificate", "not-p256")] * 3 + [
        ("certificate", "bad-csr-signature")] + [("certificate", "malformed")] * 5
    assert cloud.app.state.device_ca.certificates(dev.device_id) == []
    with pytest.raises(DirectoryRefused) as err:
        cloud.client(dev).device_certificate(csr_of(ec.generate_private_key(ec.SECP384R1()), dev.device_id))
    assert err.value.status == 403


def test_unsigned_and_forged_requests_are_refused_and_never_attributed(cloud, tmp_path):
    dev = cloud.enrol()
    key, stranger = load_key(dev.key_path), ed25519.Ed25519PrivateKey.generate()
    asked = csr(device_key(tmp_path), dev.device_id)
    body = json.dumps({"csr_pem": asked}).encode()
    other_body = json.dumps({"csr_pem": csr(device_key(tmp_path, "other.key"), dev.device_id)}).encode()
    answers = [
        cloud.http.post(PATH, content=body, headers={"Content-Type": "application/json"}),  # unsigned
        request_cert(cloud.http, dev.device_id, stranger, asked),  # the device's id, not its key
        request_cert(cloud.http, dev.device_id, key, asked,  # signed over another CSR
                     headers=sign_headers(key, dev.device_id, "POST", PATH, other_body)),
        request_cert(cloud.http, dev.device_id, key, asked,  # signed for another path
                     headers=sign_headers(key, dev.device_id, "POST", "/v1/cards/lookup", body)),
        request_cert(cloud.http, "mfp-nobody", stranger, asked),
    ]
    assert [(r.status_code, r.json()) for r in answers] == [(401, {"error": "unauthenticated"})] * 5
    assert cert_events(cloud, dev.device_id) == []
    assert [e["action"] for e in cloud.admin.audit(device_id=dev.device_id)] == ["enrol-token", "enrol"]
    assert cloud.app.state.device_ca.certificates(dev.device_id) == []
    # a replay of the device's own request is its own: refused and audited, one certificate only
    headers = sign_headers(key, dev.device_id, "POST", PATH, body)
    assert [request_cert(cloud.http, dev.device_id, key, asked, headers=headers).status_code
            for _ in range(2)] == [200, 401]
    assert cert_events(cloud, dev.device_id) == [("certificate", "issued"), ("certificate", "replay")]
    assert len(cloud.app.state.device_ca.certificates(dev.device_id)) == 1


# -- revocation ---------------------------------------------------------------------------------

def test_revoking_the_device_publishes_its_serials_and_stops_renewal(cloud, tmp_path, capsys):
    need_binary("openssl")
    from cloud.cli import main
    dev, neighbour = cloud.enrol(), cloud.enrol("mfp-2.space-1")
    key_path = device_key(tmp_path)
    client = cloud.client(dev)
    first = client.device_certificate(csr(key_path, dev.device_id))
    second = client.device_certificate(csr(key_path, dev.device_id))  # a day left on the first: odd
    kept = cloud.client(neighbour).device_certificate(csr(device_key(tmp_path, "n.key"), neighbour.device_id))
    assert cert_events(cloud, dev.device_id) == [("certificate", "issued"), ("anomaly", "early-certificate"),
                                                ("certificate", "issued")]
    serial = lambda pem: x509.load_pem_x509_certificate(pem.encode()).serial_number

    r = cloud.http.get("/v1/spaces/space-1/crl")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pkix-crl"
    assert r.headers["cache-control"] == "public, max-age=300"
    crl = x509.load_der_x509_crl(r.content)
    ca = x509.load_pem_x509_certificate(first.ca_pem.encode())
    assert crl.is_signature_valid(ca.public_key()) and crl.issuer == ca.subject and len(crl) == 0
    now = time.time()
    assert crl.next_update_utc.timestamp() - now <= 3600 and crl.last_update_utc.timestamp() <= now
    assert openssl_verify(tmp_path, first.ca_pem, first.certificate_pem, r.content).returncode == 0

    rc = main(["--db", cloud.db_url, "--kek-file", str(cloud.kek_file), "device", "revoke", "--device", dev.device_id])
    out = capsys.readouterr()
    assert rc == 0 and f"device {dev.device_id} revoked (2 certificates" in out.out, out

    crl = x509.load_der_x509_crl(cloud.http.get("/v1/spaces/space-1/crl").content)
    assert crl.is_signature_valid(ca.public_key())
    assert {c.serial_number for c in crl} == {serial(first.certificate_pem), serial(second.certificate_pem)}
    assert crl.get_revoked_certificate_by_serial_number(serial(kept.certificate_pem)) is None
    crl_der = cloud.http.get("/v1/spaces/space-1/crl").content
    result = openssl_verify(tmp_path, first.ca_pem, second.certificate_pem, crl_der)
    assert result.returncode != 0 and "revoked" in result.stdout + result.stderr
    assert openssl_verify(tmp_path, kept.ca_pem, kept.certificate_pem,
                          cloud.http.get("/v1/spaces/space-1/crl").content).returncode == 0
    assert len(x509.load_der_x509_crl(cloud.http.get("/v1/spaces/space-2/crl").content)) == 0

    # no renewal, no lookup, until re-enrolled (under a new id)
    with pytest.raises(DirectoryRefused) as err:
        client.device_certificate(csr(key_path, dev.device_id))
    assert err.value.status == 401
    assert cert_events(cloud, dev.device_id)[-2:] == [("revoke", "done"), ("certificate", "revoked")]
    assert len(cloud.app.state.device_ca.certificates(dev.device_id)) == 2
    assert main(["--db", cloud.db_url, "device", "revoke", "--device", dev.device_id]) == 1  # no longer active
    assert main(["--db", cloud.db_url, "device", "revoke", dev.device_id, "--device", dev.device_id]) == 1
    capsys.readouterr()


# -- rate limit, keys at rest -------------------------------------------------------------------

def test_certificate_requests_are_rate_limited_per_device(cloud, tmp_path):
    dev, neighbour = cloud.enrol(), cloud.enrol("mfp-2.space-1")
    clock = [5000.0]
    cloud.app.state.cert_limit.clock = lambda: clock[0]
    key_path = device_key(tmp_path)
    key = load_key(dev.key_path)
    codes = [request_cert(cloud.http, dev.device_id, key, csr(key_path, dev.device_id)).status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    r = request_cert(cloud.http, dev.device_id, key, csr(key_path, dev.device_id))
    assert (r.status_code, r.json()) == (429, {"error": "rate-limited"}) and 300 <= int(r.headers["retry-after"]) <= 361
    # the device's lookups have their own allowance; its neighbour has its own
    assert cloud.client(dev).fetch_profile("acme").org_id == "acme"
    n_key = device_key(tmp_path, "n.key")
    assert cloud.client(neighbour).device_certificate(csr(n_key, neighbour.device_id)).not_after > time.time()
    limited = [e for e in cloud.admin.audit(device_id=dev.device_id) if e["outcome"] == "rate-limited"]
    assert [(e["action"], e["outcome"]) for e in limited] == [("certificate", "rate-limited")]  # once a minute
    clock[0] += 370  # ten an hour: one more after six minutes
    assert request_cert(cloud.http, dev.device_id, key, csr(key_path, dev.device_id)).status_code == 200
    assert len(cloud.app.state.device_ca.certificates(dev.device_id)) == 6


def test_the_ca_key_follows_a_kek_rotation_and_a_swapped_ca_is_refused(cloud, tmp_path):
    from cloud.api import create_app
    dev = cloud.enrol()
    key_path = device_key(tmp_path)
    first = cloud.client(dev).device_certificate(csr(key_path, dev.device_id))
    result = cloud.admin.rotate_key(cloud.kek_file)
    assert result["ca_keys_rewrapped"] == 1
    from cloud.crypto import Keyring
    fresh = TestClient(create_app(cloud.engine, Keyring(cloud.kek_file)), base_url="http://testserver",
                       raise_server_exceptions=False)  # a new process: nothing cached
    body_csr = csr(key_path, dev.device_id)
    r = request_cert(fresh, dev.device_id, load_key(dev.key_path), body_csr)
    assert r.status_code == 200 and r.json()["ca_pem"] == first.ca_pem
    # a CA certificate replaced in the database: its key no longer opens, nothing is issued
    forged_key = ec.generate_private_key(ec.SECP256R1())
    ca = x509.load_pem_x509_certificate(first.ca_pem.encode())
    forged_ca = (x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject)
                 .public_key(forged_key.public_key()).serial_number(7)
                 .not_valid_before(ca.not_valid_before_utc).not_valid_after(ca.not_valid_after_utc)
                 .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                 .add_extension(x509.SubjectKeyIdentifier.from_public_key(forged_key.public_key()), critical=False)
                 .sign(forged_key, hashes.SHA256()))
    with cloud.engine.begin() as c:
        c.execute(text("UPDATE space_ca SET cert_pem = :p WHERE space_id = 'space-1'"),
                  {"p": forged_ca.public_bytes(serialization.Encoding.PEM).decode()})
    fresh = TestClient(create_app(cloud.engine, Keyring(cloud.kek_file)), base_url="http://testserver",
                       raise_server_exceptions=False)
    r = request_cert(fresh, dev.device_id, load_key(dev.key_path), csr(key_path, dev.device_id))
    assert (r.status_code, r.json()) == (503, {"error": "unavailable"})
    assert cert_events(cloud, dev.device_id)[-1] == ("certificate", "undecryptable")
    assert fresh.get("/v1/spaces/space-1/crl").status_code == 503
    assert len(cloud.app.state.device_ca.certificates(dev.device_id)) == 2


# -- the firmware's side, against the real cloud ------------------------------------------------

def test_firmware_ensure_keeps_a_certificate_from_the_real_cloud(cloud, tmp_path):
    from firmware.device_cert import CURRENT, RENEWED, ensure
    dev = cloud.enrol()
    state = tmp_path / "state"
    state.mkdir()
    (state / "enrolment.json").write_text(json.dumps({"device_id": dev.device_id, "space_id": "space-1"}))
    client = cloud.client(dev)
    done = ensure(state, client, time.time())
    assert (done.status, done.usable) == (RENEWED, True), done
    assert stat.S_IMODE(os.stat(done.key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(done.cert_path).st_mode) == stat.S_IMODE(os.stat(done.ca_path).st_mode) == 0o644
    assert done.ca_path.read_text() == cloud.http.get("/v1/spaces/space-1/ca.pem").text
    again = ensure(state, client, time.time())
    assert (again.status, again.not_after) == (CURRENT, done.not_after)
    assert len(cloud.app.state.device_ca.certificates(dev.device_id)) == 1
    cloud.admin.revoke_device(dev.device_id)
    late = ensure(state, client, done.not_after - 3600)  # due, and refused: the old one still in place
    assert (late.status, late.reason, late.usable) == ("refused", "http-401", True)
