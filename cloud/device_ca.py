"""Each space's device certificate authority (issue 18): the cloud certifies the keys its enrolled
devices make, for a day at a time, and publishes each space's CA certificate and revocation list.

One CA per space: an ECDSA P-256 key and a self-signed certificate (CN "tenantprint space <id>
device CA", pathlen 0, keyCertSign + cRLSign, ten years), made on first use. The CA key is stored
sealed like a profile's secrets (cloud/crypto.py: a data key wrapped by the KEK); its associated
data binds the space id and the SHA-256 of the CA certificate, so a CA certificate swapped in the
database makes the key not open (503), and `rotate-key` re-wraps it with the rest.

A device certificate certifies the key of a CSR whose signature verifies and whose key is EC P-256
(what a TPM 2.0 makes). The CSR's subject and extensions are ignored: the certificate names the
device whose signed request asked for it (CN and SAN dNSName = device id: strongSwan matches the
IKE identity against the SANs), serial 128 random bits, valid from 5 minutes before the request
(clock skew) to 24 hours after it, EKU clientAuth + serverAuth (IKE and RadSec clients; the
session cupsd's IPPS), keyUsage digitalSignature, SKI/AKI. Each issued certificate is a
`device_cert` row (serial, device, validity, revoked_at).

Revocation is the device's, not a certificate's: revoking a device (`tenantprint cloud device
revoke`, `DeviceCA.revoke`) sets its status `revoked` and puts every certificate of it that has not
expired on its space's CRL, in one transaction. A revoked device gets no certificate (nor any
lookup) again: a device id enrols once, so the MFP is re-enrolled under a new id. The CRL
(`crl`) lists the space's revoked, unexpired certificates; thisUpdate is 5 minutes back (skew),
nextUpdate one hour ahead, CRL number = the unix second it was made.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import (
    Engine,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from cloud.audit_log import audit
from cloud.crypto import DecryptError, Keyring, Sealed
from cloud.lookup import T_DEVICE, Refused, Unauthenticated, _device_refused
from cloud.models import ACTIVE, REVOKED, Base, Space
from cloud.storage import read_txn, upsert, write_txn

CERT_LIFETIME_S = 24 * 3600
BACKDATE_S = 300
CRL_LIFETIME_S = 3600
CA_LIFETIME_S = 10 * 365 * 86400
EARLY_RENEWAL_S = 12 * 3600  # a device renews within 8 h of expiry: a request with more left is odd
CERT_PER_HOUR, CERT_BURST = 10.0, 5  # per device, after its signature verified (cloud/api.py)
MAX_CSR = 8 * 1024


class SpaceCA(Base):
    """A space's device CA: its certificate in clear, its private key sealed (`ca_key_aad`)."""
    __tablename__ = "space_ca"
    space_id: Mapped[str] = mapped_column(ForeignKey("space.id"), primary_key=True)
    cert_pem: Mapped[str] = mapped_column(Text)
    kek_id: Mapped[str] = mapped_column(String(32), index=True)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    key_ct: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class DeviceCertificate(Base):
    """A certificate the space's CA issued to a device (serial: lowercase hex)."""
    __tablename__ = "device_cert"
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("space.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("device.id"), index=True)
    not_before: Mapped[float] = mapped_column(Float)
    not_after: Mapped[float] = mapped_column(Float)
    issued_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    key_sha256: Mapped[str] = mapped_column(String(64))  # of the certified key's SubjectPublicKeyInfo
    __table_args__ = (Index("ix_device_cert_space_revoked", "space_id", "revoked_at"),)


T_SPACE_CA, T_CERT, T_SPACE = SpaceCA.__table__, DeviceCertificate.__table__, Space.__table__


class DeviceCAError(Exception):
    """Base of the device CA's errors (messages name ids, never key material)."""


class UnknownSpace(DeviceCAError):
    """No such space (the public endpoints answer 404)."""


class CsrRefused(DeviceCAError):
    """A certificate request that is not served: `reason` is `malformed` (no PEM CSR),
    `bad-csr-signature` or `not-p256`."""

    def __init__(self, reason: str):
        super().__init__(f"certificate request refused ({reason})")
        self.reason = reason


@dataclass(frozen=True)
class IssuedCertificate:
    certificate_pem: str
    ca_pem: str
    not_after: int  # unix seconds

    def answer(self) -> dict:
        return {"certificate_pem": self.certificate_pem, "ca_pem": self.ca_pem, "not_after": self.not_after}


def ca_key_aad(space_id: str, cert_pem: str) -> bytes:
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    return b"tenantprint-space-ca\0" + space_id.encode() + b"\0" + hashlib.sha256(der).digest()


def key_sha256(key: ec.EllipticCurvePublicKey) -> str:
    """The SHA-256 (hex) of a key's SubjectPublicKeyInfo: what a device's certificates pin."""
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(int(t), timezone.utc)


def csr_public_key(csr_pem: str | bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a CSR whose signature verifies; else `CsrRefused`."""
    raw = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    if len(raw) > MAX_CSR:
        raise CsrRefused("malformed")
    try:
        csr = x509.load_pem_x509_csr(raw)
        key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CsrRefused("malformed") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CsrRefused("not-p256")
    try:
        valid = csr.is_signature_valid
    except Exception:  # an algorithm the library cannot check is no valid signature either
        valid = False
    if not valid:
        raise CsrRefused("bad-csr-signature")
    return key


def parse_request(body: bytes) -> str | None:
    """The CSR PEM of a certificate request's body, or None unless it is exactly `{"csr_pem": str}`."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.keys() != {"csr_pem"} or not isinstance(data["csr_pem"], str):
        return None
    return data["csr_pem"]


def revoke_device_in(conn, device_id: str, now: float, space_id: str | None = None) -> int | None:
    """In `conn`'s write transaction: an active `device_id` (of `space_id`, when given) becomes
    `revoked` and its unexpired certificates are revoked at `now`. Returns how many certificates,
    or None when there is no such active device."""
    cond = [T_DEVICE.c.id == device_id, T_DEVICE.c.status == ACTIVE]
    if space_id is not None:
        cond.append(T_DEVICE.c.space_id == space_id)
    if conn.execute(update(T_DEVICE).where(*cond).values(status=REVOKED, revoked_at=now)).rowcount != 1:
        return None
    return conn.execute(update(T_CERT).where(T_CERT.c.device_id == device_id, T_CERT.c.revoked_at.is_(None),
                                             T_CERT.c.not_after > now).values(revoked_at=now)).rowcount


class DeviceCA:
    """The spaces' device CAs on one database. Thread-safe; unsealed CA keys are cached per
    process by sealed record (a re-wrapped or replaced record is a new entry)."""

    def __init__(self, engine: Engine, keyring: Keyring):
        self.engine, self.keyring = engine, keyring
        self._cache: dict[tuple, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = {}
        self._lock = threading.Lock()

    # -- the CA itself ---------------------------------------------------------------------

    def _open(self, space_id: str, row) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        cache_key = (space_id, row.kek_id, bytes(row.wrapped_dek), row.cert_pem)
        with self._lock:
            hit = self._cache.get(cache_key)
        if hit is None:
            der = self.keyring.open(Sealed(row.kek_id, bytes(row.wrapped_dek), bytes(row.key_ct)),
                                    ca_key_aad(space_id, row.cert_pem))
            hit = (serialization.load_der_private_key(der, None), x509.load_pem_x509_certificate(row.cert_pem.encode()))
            with self._lock:
                if len(self._cache) >= 10_000:
                    self._cache.clear()
                self._cache[cache_key] = hit
        return hit

    def _find(self, conn, space_id: str):
        row = conn.execute(select(T_SPACE_CA).where(T_SPACE_CA.c.space_id == space_id)).first()
        return None if row is None else self._open(space_id, row)

    def _ensure(self, conn, space_id: str, now: float):
        """The space's CA (key, certificate), made and stored in `conn`'s write transaction if it
        has none; `UnknownSpace` when the space does not exist."""
        found = self._find(conn, space_id)
        if found is not None:
            return found
        if conn.execute(select(T_SPACE.c.id).where(T_SPACE.c.id == space_id)).first() is None:
            raise UnknownSpace(f"no space {space_id}")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tenantprint"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"tenantprint space {space_id} device CA")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(secrets.randbits(128) or 1)
                .not_valid_before(_utc(now - BACKDATE_S)).not_valid_after(_utc(now + CA_LIFETIME_S))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
                .sign(key, hashes.SHA256()))
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        sealed = self.keyring.seal(der, ca_key_aad(space_id, cert_pem))
        conn.execute(upsert(conn.dialect.name, T_SPACE_CA).on_conflict_do_nothing(index_elements=["space_id"]),
                     {"space_id": space_id, "cert_pem": cert_pem, "kek_id": sealed.kek_id,
                      "wrapped_dek": sealed.wrapped_dek, "key_ct": sealed.ciphertext, "created_at": now})
        audit(conn, "device-ca", "created", at=now)
        return self._find(conn, space_id)  # ours, or the one another process stored first

    def ca_pem(self, space_id: str, now: float | None = None) -> str:
        """The space's CA certificate (PEM), made on first use; `UnknownSpace`."""
        with read_txn(self.engine) as conn:
            found = self._find(conn, space_id)
        if found is None:
            with write_txn(self.engine) as conn:
                found = self._ensure(conn, space_id, time.time() if now is None else now)
        return found[1].public_bytes(serialization.Encoding.PEM).decode()

    # -- certificates ------------------------------------------------------------------------

    def _issue(self, conn, space_id: str, device_id: str, key: ec.EllipticCurvePublicKey,
               now: float) -> IssuedCertificate:
        ca_key, ca_cert = self._ensure(conn, space_id, now)
        serial = secrets.randbits(128) or 1
        not_before = int(now - BACKDATE_S)
        not_after = int(min(now + CERT_LIFETIME_S, ca_cert.not_valid_after_utc.timestamp()))
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
                .issuer_name(ca_cert.subject).public_key(key).serial_number(serial)
                .not_valid_before(_utc(not_before)).not_valid_after(_utc(not_after))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                                      ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(device_id)]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
                .sign(ca_key, hashes.SHA256()))
        conn.execute(T_CERT.insert().values(serial=f"{serial:032x}", space_id=space_id, device_id=device_id,
                                            not_before=not_before, not_after=not_after, issued_at=now,
                                            key_sha256=key_sha256(key)))
        return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM).decode(),
                                 ca_cert.public_bytes(serialization.Encoding.PEM).decode(), not_after)

    def issue(self, space_id: str, device_id: str, csr_pem: str, now: float | None = None) -> str:
        """A certificate (PEM) for `device_id` of `space_id` on the key of `csr_pem` (`CsrRefused`
        unless its signature verifies and its key is P-256; its subject is ignored). No device
        check: operators and tests; devices ask through `request`."""
        key = csr_public_key(csr_pem)
        with write_txn(self.engine) as conn:
            return self._issue(conn, space_id, device_id, key, time.time() if now is None else now).certificate_pem

    def request(self, device_id: str, nonce: str, public_key: bytes, body: bytes,
                now: float | None = None) -> IssuedCertificate:
        """A device's certificate request (`POST /v1/device/certificate`), its signature verified
        with `public_key` (`DeviceDirectory.authenticate`). One write transaction: the device
        check (as a lookup's: unknown, key changed, revoked, replay), the spent nonce, the CSR
        check, the certificate row and one audit record (`certificate`: `issued`, `malformed`,
        `bad-csr-signature`, `not-p256`, or the device refusal) commit together; an `anomaly`
        `early-certificate` too when the device holds a certificate with more than 12 h left.
        Raises `Unauthenticated` / `Refused` (reason `malformed` or a CSR refusal), both audited."""
        now = time.time() if now is None else now
        csr_pem = parse_request(body)
        with write_txn(self.engine) as conn:
            dev = conn.execute(select(T_DEVICE.c.public_key, T_DEVICE.c.status, T_DEVICE.c.space_id)
                               .where(T_DEVICE.c.id == device_id)).first()
            outcome, key, issued = _device_refused(conn, dev, device_id, nonce, public_key, now), None, None
            if outcome is None:
                try:
                    key = csr_public_key(csr_pem) if csr_pem is not None else None
                    outcome = "malformed" if key is None else None
                except CsrRefused as exc:
                    outcome = exc.reason
            if outcome is None:
                # the device's first certificate pins its key (`ike.key`, never replaced on the
                # device): a copied device.key alone gets no certificate for a key of its own
                pinned = conn.execute(select(T_CERT.c.key_sha256).where(T_CERT.c.device_id == device_id)
                                      .order_by(T_CERT.c.issued_at).limit(1)).scalar()
                if pinned is not None and pinned != key_sha256(key):
                    outcome = "ike-key-changed"
                    audit(conn, "anomaly", "ike-key-changed", device_id=device_id, at=now)
            if outcome is None:
                early = conn.execute(select(T_CERT.c.serial).where(
                    T_CERT.c.device_id == device_id, T_CERT.c.revoked_at.is_(None),
                    T_CERT.c.not_after > now + EARLY_RENEWAL_S).limit(1)).first()
                try:
                    issued = self._issue(conn, dev.space_id, device_id, key, now)
                except DecryptError:
                    outcome = "undecryptable"  # the CA key does not open: audited, 503 below
                else:
                    outcome = "issued"
                    if early is not None:
                        audit(conn, "anomaly", "early-certificate", device_id=device_id, at=now)
            audit(conn, "certificate", outcome, device_id=device_id, at=now)
        if issued is not None:
            return issued
        if outcome == "undecryptable":
            raise DecryptError(f"device CA key of the space of device {device_id} does not open")
        device_refusal = outcome in ("unknown-device", "key-changed", "revoked", "replay")
        denied = Unauthenticated(outcome, device_id) if device_refusal else Refused(outcome)
        denied.audited = True
        raise denied

    # -- revocation --------------------------------------------------------------------------

    def revoke(self, space_id: str, device_id: str, now: float | None = None) -> int:
        """Revoke the active device `device_id` of `space_id` and all its unexpired certificates
        (audited `revoke`); returns how many certificates went on the CRL. `DeviceCAError` when
        there is no such active device."""
        now = time.time() if now is None else now
        with write_txn(self.engine) as conn:
            n = revoke_device_in(conn, device_id, now, space_id)
            if n is None:
                raise DeviceCAError(f"no active device {device_id} in space {space_id}")
            audit(conn, "revoke", "done", device_id=device_id, at=now)
        return n

    def crl(self, space_id: str, now: float | None = None) -> bytes:
        """The space's CRL (DER), signed by its CA, nextUpdate an hour from `now`; `UnknownSpace`."""
        now = time.time() if now is None else now
        with read_txn(self.engine) as conn:
            found = self._find(conn, space_id)
            revoked = conn.execute(select(T_CERT.c.serial, T_CERT.c.revoked_at).where(
                T_CERT.c.space_id == space_id, T_CERT.c.revoked_at.is_not(None), T_CERT.c.not_after > now)
                .order_by(T_CERT.c.revoked_at)).all()
        if found is None:
            with write_txn(self.engine) as conn:
                found = self._ensure(conn, space_id, now)
        ca_key, ca_cert = found
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(_utc(now - BACKDATE_S)).next_update(_utc(now + CRL_LIFETIME_S))
                   .add_extension(x509.CRLNumber(int(now)), critical=False).add_extension(aki, critical=False))
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(_utc(at)).build())
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def certificates(self, device_id: str) -> list[dict]:
        """The certificates issued to `device_id`, oldest first (operators, tests)."""
        with read_txn(self.engine) as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(T_CERT).where(T_CERT.c.device_id == device_id).order_by(T_CERT.c.issued_at))]


__all__ = [
    "CERT_BURST",
    "CERT_PER_HOUR",
    "T_CERT",
    "T_SPACE_CA",
    "CsrRefused",
    "DeviceCA",
    "DeviceCAError",
    "DeviceCertificate",
    "IssuedCertificate",
    "SpaceCA",
    "UnknownSpace",
    "ca_key_aad",
    "csr_public_key",
    "revoke_device_in",
]
