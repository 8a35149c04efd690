"""The org gateway's own certificate, for the certificate mode of its IKE (issue 18).

In that mode the MFP proves itself with its device certificate (issued for a day by the coworking
space's device CA in the cloud) and the gateway with a certificate of the org's own gateway CA. The
MFP's profile then carries only public facts: the gateway CA certificate to verify the gateway
with, the gateway's identity, the selectors.

- `make_ca(org_id)`: the org's gateway CA (ECDSA P-256, self-signed, 10 years, path length 0);
- `issue_gateway_cert(ca, gateway_id, days)`: the gateway's certificate, its IKE identity as a
  dNSName (or an IP address SAN when the identity is one: strongSwan matches the identity against
  the SANs), serverAuth;
- `CertAndKey.key_pem()`: the private key as PEM (write it 0600 on the gateway only).

The CA's key belongs offline with the org's admin: `tenantprint org gateway-config` uses it only to
issue the gateway's certificate.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertAndKey:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @classmethod
    def load(cls, cert_pem: str | bytes, key_pem: bytes) -> "CertAndKey":
        cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the key is not an EC key")
        return cls(cert, key)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(org_id: str, *, years: int = 10) -> CertAndKey:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org_id),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{org_id} gateway CA")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * years))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return CertAndKey(cert, key)


def _san(identity: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(identity))
    except ValueError:
        return x509.DNSName(identity)


def issue_gateway_cert(ca: CertAndKey, gateway_id: str, *, days: int = 825) -> CertAndKey:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([_san(gateway_id)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return CertAndKey(cert, key)


class GatewayKey:
    """The gateway's certificate and key as it signs with them: its reports to the cloud
    (org/gateway_report.py) and its answers to the desks (org/answer_signature.py). `cert_b64`
    is what the `X-TP-Gateway-Cert` header carries (base64 DER)."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self._key = key
        self.cert_b64 = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    @classmethod
    def from_files(cls, cert_file: str, key_file: str) -> "GatewayKey":
        """OSError, or ValueError when the files are not a PEM certificate and its EC key."""
        with open(cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_file} is not the gateway's EC key")
        return cls(cert, key)

    def sign(self, message: bytes) -> bytes:
        """A DER ECDSA-SHA256 signature over `message`."""
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


def cert_from_header(value: str) -> x509.Certificate:
    """The certificate an `X-TP-Gateway-Cert` header carries; ValueError when it is none."""
    try:
        return x509.load_der_x509_certificate(base64.b64decode(value, validate=True))
    except binascii.Error:
        raise ValueError("not base64") from None


class NotTheGateway(ValueError):
    """A certificate that is not the org gateway's (another CA, another name, expired, a CA)."""


def verify_gateway_cert(cert: x509.Certificate, ca: x509.Certificate, gateway_id: str,
                        now: dt.datetime | None = None) -> ec.EllipticCurvePublicKey:
    """The gateway's public key when `cert` is the certificate `issue_gateway_cert` makes: issued
    by `ca` (its signature), current, not a CA, `gateway_id` among its subjectAltNames (the org CA
    also certifies its RADIUS server: that certificate is not the gateway's), an EC key; else
    NotTheGateway. Used by the cloud (the gateway's reports) and the desks (its listing)."""
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise NotTheGateway("not issued by the org's CA") from None
    now = now or _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise NotTheGateway("not current")
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise NotTheGateway("a CA certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = {*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress))}
    except x509.ExtensionNotFound:
        names = set()
    key = cert.public_key()
    if gateway_id not in names or not isinstance(key, ec.EllipticCurvePublicKey):
        raise NotTheGateway("not the gateway's name or key")
    return key
