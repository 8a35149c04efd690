"""The device side of the space's device CA (issue 18), unit only: the certificate key
(`make_key`: 0600, atomic, never replaced), the CSR, when to renew, the checks of what the cloud
answers, and `firmware.device_cert.ensure` against a fake client playing an honest, a down and a
lying cloud (the files in place never change for a bad answer, and nothing raises)."""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from firmware.device_cert import (
    CA_NAME,
    CERT_NAME,
    CURRENT,
    FAILED,
    KEY_NAME,
    NOT_ENROLLED,
    REFUSED,
    REJECTED,
    RENEWED,
    UNREACHABLE,
    ensure,
)
from hal.directory import DirectoryMalformed, DirectoryRefused, DirectoryUnreachable
from hal.directory.device_cert import (
    CertificateRejected,
    DeviceKeyError,
    csr,
    make_key,
    needs_renewal,
    verify_issued,
)

DEVICE = "mfp-1.space-1"
NOW = 1_760_000_000.0
HOUR = 3600


def _t(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def make_ca(name: str = "tenantprint space space-1 device CA", *, ca: bool = True, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(_t(NOW - 86400)).not_valid_after(_t(NOW + 3650 * 86400))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue(ca, public_key, *, name: str = DEVICE, sans=None, start: float = NOW, life: float = 24 * HOUR,
          is_ca: bool = False, eku=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH), signer=None):
    ca_key, ca_cert = ca
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(_t(start - 300)).not_valid_after(_t(start + life))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)] if sans is None else sans), critical=False))
    if eku:
        cert = cert.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return pem(cert.sign(signer or ca_key, hashes.SHA256()))


@dataclass
class Issued:
    certificate_pem: str
    ca_pem: str
    not_after: int


class FakeCloud:
    """A device CA at the other end of the client: `answer(csr_public_key, ca)` makes the reply
    (honest by default), `error` is raised instead when set."""

    def __init__(self):
        self.ca = make_ca()
        self.calls = 0
        self.error: Exception | None = None
        self.now = NOW
        self.answer = lambda key, ca: Issued(issue(ca, key, start=self.now), pem(ca[1]), int(self.now + 24 * HOUR))

    def device_certificate(self, csr_pem: str):
        self.calls += 1
        if self.error is not None:
            raise self.error
        request = x509.load_pem_x509_csr(csr_pem.encode())
        assert request.is_signature_valid
        return self.answer(request.public_key(), self.ca)


@pytest.fixture
def state(tmp_path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    (d / "enrolment.json").write_text(json.dumps({"device_id": DEVICE, "space_id": "space-1"}))
    return d


def files(state: Path) -> dict[str, bytes]:
    return {n: (state / n).read_bytes() for n in (KEY_NAME, CERT_NAME, CA_NAME) if (state / n).exists()}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the key, the CSR, renewal ------------------------------------------------------------------

def test_make_key_makes_a_p256_key_0600_once_and_never_replaces_one(tmp_path):
    path = tmp_path / "dir" / "ike.key"
    assert make_key(path) is True
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert mode(path) == 0o600 and b"PRIVATE KEY" in path.read_bytes()
    first = path.read_bytes()
    assert make_key(path) is False and path.read_bytes() == first
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    assert make_key(junk) is False and junk.read_bytes() == b"not a key"
    dangling = tmp_path / "link.key"
    dangling.symlink_to(tmp_path / "nowhere")
    assert make_key(dangling) is False and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["ike.key"]  # no temporary file left


def test_make_key_racing_itself_leaves_exactly_one_whole_key(tmp_path):
    path = tmp_path / "ike.key"
    made, barrier = [], threading.Barrier(8)

    def run():
        barrier.wait()
        made.append(make_key(path))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made.count(True) == 1
    serialization.load_pem_private_key(path.read_bytes(), None)
    assert [p.name for p in tmp_path.iterdir()] == ["ike.key"]


def test_csr_names_the_device_and_proves_the_key(tmp_path):
    path = tmp_path / "ike.key"
    make_key(path)
    request = x509.load_pem_x509_csr(csr(path, DEVICE).encode())
    assert request.is_signature_valid
    assert request.subject.rfc4514_string() == f"CN={DEVICE}"
    assert request.public_key() == serialization.load_pem_private_key(path.read_bytes(), None).public_key()
    other = tmp_path / "rsa.key"
    other.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DeviceKeyError):
        csr(other, DEVICE)
    with pytest.raises(DeviceKeyError):
        csr(tmp_path / "missing.key", DEVICE)


def test_needs_renewal():
    ca = make_ca()
    cert = issue(ca, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert needs_renewal(None, NOW) and needs_renewal("", NOW) and needs_renewal("junk", NOW)
    assert not needs_renewal(cert, NOW)
    assert not needs_renewal(cert.encode(), NOW + 15 * HOUR)
    assert needs_renewal(cert, NOW + 16 * HOUR + 1)  # within 8 h of its end
    assert needs_renewal(cert, NOW + 25 * HOUR)
    assert not needs_renewal(cert, NOW + 20 * HOUR, margin_s=HOUR)
    assert needs_renewal(cert, NOW + 20 * HOUR, margin_s=5 * HOUR)


def test_verify_issued_accepts_only_a_current_certificate_for_this_device_and_key(tmp_path):
    path = tmp_path / "ike.key"
    make_key(path)
    ours = serialization.load_pem_private_key(path.read_bytes(), None).public_key()
    ca, other_ca = make_ca(), make_ca()
    assert verify_issued(issue(ca, ours), pem(ca[1]), path, DEVICE, NOW) == NOW + 24 * HOUR
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    cases = {
        "not-this-device": [issue(ca, ours, name="mfp-2.space-1"),
                            issue(ca, ours, sans=[x509.DNSName(DEVICE), x509.DNSName("gw.acme")]),
                            issue(ca, ours, sans=[x509.DNSName(DEVICE), x509.RFC822Name("a@b")]),
                            issue(ca, ours, sans=[])],
        "not-our-key": [issue(ca, stranger)],
        "not-signed-by-ca": [issue(ca, ours, signer=other_ca[0]), issue(other_ca, ours)],
        "not-valid-now": [issue(ca, ours, start=NOW - 25 * HOUR), issue(ca, ours, start=NOW + HOUR)],
        "wrong-usage": [issue(ca, ours, is_ca=True), issue(ca, ours, eku=()),
                        issue(ca, ours, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))],
        "unparseable": ["", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
    }
    for reason, certs in cases.items():
        for cert in certs:
            with pytest.raises(CertificateRejected) as err:
                verify_issued(cert, pem(ca[1]), path, DEVICE, NOW)
            assert err.value.reason == reason
    not_ca = make_ca(ca=False)
    with pytest.raises(CertificateRejected, match="not-a-ca"):
        verify_issued(issue(not_ca, ours), pem(not_ca[1]), path, DEVICE, NOW)
    leaf_as_ca = issue(ca, ours)  # not self-signed
    with pytest.raises(CertificateRejected, match="not-a-ca"):
        verify_issued(issue(ca, ours), leaf_as_ca, path, DEVICE, NOW)
    with pytest.raises(CertificateRejected, match="ca-not-valid-now"):
        verify_issued(issue(ca, ours, start=NOW + 4000 * 86400), pem(ca[1]), path, DEVICE, NOW + 4000 * 86400)


# -- ensure ---------------------------------------------------------------------------------------

def test_ensure_makes_the_key_renews_and_then_leaves_a_current_certificate(state):
    cloud = FakeCloud()
    done = ensure(state, cloud, NOW)
    assert (done.status, done.usable, done.not_after) == (RENEWED, True, NOW + 24 * HOUR)
    assert (mode(state / KEY_NAME), mode(state / CERT_NAME), mode(state / CA_NAME)) == (0o600, 0o644, 0o644)
    assert (state / CA_NAME).read_text() == pem(cloud.ca[1])
    key = (state / KEY_NAME).read_bytes()
    again = ensure(state, cloud, NOW + 15 * HOUR)
    assert (again.status, cloud.calls) == (CURRENT, 1)
    cloud.now = NOW + 17 * HOUR
    due = ensure(state, cloud, NOW + 17 * HOUR)  # within 8 h of its end
    assert (due.status, due.not_after, cloud.calls) == (RENEWED, NOW + 41 * HOUR, 2)
    assert (state / KEY_NAME).read_bytes() == key  # the key stays
    assert sorted(p.name for p in state.iterdir()) == sorted(["enrolment.json", KEY_NAME, CERT_NAME, CA_NAME])


def test_ensure_takes_its_place_from_a_config_too(tmp_path):
    cfg = SimpleNamespace(device=SimpleNamespace(state_dir=str(tmp_path), device_id=DEVICE))
    assert ensure(cfg, FakeCloud(), NOW).status == RENEWED
    assert ensure(SimpleNamespace(device=SimpleNamespace(state_dir=str(tmp_path), device_id="")),
                  FakeCloud(), NOW).status == NOT_ENROLLED


def test_ensure_without_enrolment_or_client_does_nothing(tmp_path, state):
    assert ensure(tmp_path / "empty", FakeCloud(), NOW).status == NOT_ENROLLED
    assert ensure(state, object(), NOW).status == NOT_ENROLLED  # an unenrolled directory has no such method
    assert not (state / KEY_NAME).exists()


@pytest.mark.parametrize("error, status, reason", [
    (DirectoryUnreachable("directory answered 503"), UNREACHABLE, "DirectoryUnreachable"),
    (DirectoryUnreachable("directory answered 429"), UNREACHABLE, "DirectoryUnreachable"),
    (DirectoryMalformed("certificate: not JSON"), UNREACHABLE, "DirectoryMalformed"),
    (DirectoryRefused("revoked", 401), REFUSED, "http-401"),
    (DirectoryRefused("csr refused", 403), REFUSED, "http-403"),
    (RuntimeError("a bug in a client"), UNREACHABLE, "RuntimeError"),
])
def test_a_cloud_that_is_down_or_refuses_changes_nothing(state, error, status, reason):
    cloud = FakeCloud()
    first = ensure(state, cloud, NOW)
    before = files(state)
    cloud.error = error
    late = ensure(state, cloud, NOW + 20 * HOUR)  # due: asks, fails, the old one is still good
    assert (late.status, late.reason, late.usable, late.not_after) == (status, reason, True, first.not_after)
    assert files(state) == before
    gone = ensure(state, cloud, NOW + 25 * HOUR)  # and once it has expired
    assert (gone.status, gone.usable) == (status, False)
    assert files(state) == before


def _lies(ours, cloud: FakeCloud):
    other_ca, stranger = make_ca(), ec.generate_private_key(ec.SECP256R1()).public_key()
    ca_pem = pem(cloud.ca[1])
    return {
        "another device": ("not-this-device", lambda: Issued(issue(cloud.ca, ours, name="mfp-2.space-1"), ca_pem, 0)),
        "another key": ("not-our-key", lambda: Issued(issue(cloud.ca, stranger), ca_pem, 0)),
        "not from the CA sent": ("not-signed-by-ca", lambda: Issued(issue(other_ca, ours), ca_pem, 0)),
        "CA swapped": ("not-signed-by-ca", lambda: Issued(issue(cloud.ca, ours), pem(other_ca[1]), 0)),
        "expired": ("not-valid-now", lambda: Issued(issue(cloud.ca, ours, start=NOW - 30 * HOUR), ca_pem, 0)),
        "not yet valid": ("not-valid-now", lambda: Issued(issue(cloud.ca, ours, start=NOW + 22 * HOUR), ca_pem, 0)),
        "a CA for a leaf": ("wrong-usage", lambda: Issued(issue(cloud.ca, ours, is_ca=True), ca_pem, 0)),
        "garbage": ("unparseable", lambda: Issued("hello", "world", 0)),
        "not an answer": ("AttributeError", lambda: object()),
    }


def test_a_lying_cloud_is_refused_and_the_files_stay(state):
    cloud = FakeCloud()
    ensure(state, cloud, NOW)
    ours = serialization.load_pem_private_key((state / KEY_NAME).read_bytes(), None).public_key()
    before = files(state)
    for what, (reason, lie) in _lies(ours, cloud).items():
        cloud.answer = lambda key, ca, lie=lie: lie()
        got = ensure(state, cloud, NOW + 20 * HOUR)
        assert (got.status, got.reason, got.usable) == (REJECTED, reason, True), what
        assert files(state) == before, what


def test_a_lie_on_first_boot_leaves_no_certificate(state):
    cloud = FakeCloud()
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    cloud.answer = lambda key, ca: Issued(issue(ca, stranger), pem(ca[1]), 0)
    got = ensure(state, cloud, NOW)
    assert (got.status, got.reason, got.usable) == (REJECTED, "not-our-key", False)
    assert sorted(files(state)) == [KEY_NAME]


def test_stored_files_that_do_not_fit_are_renewed_and_a_bad_key_is_never_replaced(state):
    cloud = FakeCloud()
    ensure(state, cloud, NOW)
    (state / CERT_NAME).write_text(issue(cloud.ca, ec.generate_private_key(ec.SECP256R1()).public_key()))
    assert ensure(state, cloud, NOW + HOUR).status == RENEWED  # a certificate not of our key
    (state / CA_NAME).write_text(pem(make_ca()[1]))
    assert ensure(state, cloud, NOW + HOUR).status == RENEWED  # beside another CA
    assert cloud.calls == 3
    (state / KEY_NAME).write_bytes(b"damaged")
    broken = ensure(state, cloud, NOW + 2 * HOUR)
    assert (broken.status, broken.usable) == (FAILED, False) and "unusable" in broken.reason
    assert (state / KEY_NAME).read_bytes() == b"damaged" and cloud.calls == 3


def test_an_unwritable_state_dir_fails_without_raising(state):
    cloud = FakeCloud()
    ensure(state, cloud, NOW)
    before = files(state)
    os.chmod(state, 0o500)
    try:
        if os.access(state, os.W_OK):  # root writes anyway: make the certificate's place a directory
            os.chmod(state, 0o700)
            (state / CERT_NAME).unlink()
            (state / CERT_NAME).mkdir()
        got = ensure(state, cloud, NOW + 20 * HOUR)
    finally:
        os.chmod(state, 0o700)
    assert got.status == FAILED, got
    assert (state / CA_NAME).read_bytes() == before[CA_NAME]
