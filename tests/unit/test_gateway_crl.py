"""org/gateway_crl.py: only a current CRL of the space's device CA is loaded into the gateway."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from org.gateway_crl import CrlError, check_crl, fetch_crl

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.timezone.utc)


def ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=9))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256()))
    return cert, key


def crl(issuer, signer_key, *, last=NOW - dt.timedelta(minutes=5), nxt=NOW + dt.timedelta(hours=1)) -> bytes:
    revoked = x509.RevokedCertificateBuilder().serial_number(42).revocation_date(last).build()
    c = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject).last_update(last).next_update(nxt)
         .add_revoked_certificate(revoked).sign(signer_key, hashes.SHA256()))
    return c.public_bytes(serialization.Encoding.DER)


SPACE = ca("space-1 device CA")
PEM = SPACE[0].public_bytes(serialization.Encoding.PEM)


def test_a_current_crl_of_the_space_ca_is_taken():
    got = check_crl(crl(*SPACE), PEM, NOW)
    assert [r.serial_number for r in got] == [42]


@pytest.mark.parametrize("why, der", [
    ("another CA's", crl(*ca("someone else"))),
    ("signed by another key under the space CA's name", crl(SPACE[0], ec.generate_private_key(ec.SECP256R1()))),
    ("out of date", crl(*SPACE, last=NOW - dt.timedelta(hours=3), nxt=NOW - dt.timedelta(hours=1))),
    ("dated in the future", crl(*SPACE, last=NOW + dt.timedelta(hours=1), nxt=NOW + dt.timedelta(hours=2))),
    ("not a CRL", b"\x30\x03junk"),
])
def test_a_crl_that_is_not_current_or_not_the_space_cas_is_refused(why, der):
    with pytest.raises(CrlError):
        check_crl(der, PEM, NOW)


def test_the_crl_comes_over_https_only():
    with pytest.raises(CrlError, match="https"):
        fetch_crl("http://10.78.0.1/v1/spaces/space-1/crl")
