"""The device's certificate key, its certificate requests and the checks of what the cloud answers.

The space's device CA in the cloud (cloud/device_ca.py) certifies, for 24 h at a time, a P-256 key
the device makes itself (the kind a TPM 2.0 makes; this module keeps it in a PEM file until the
TPM path replaces `make_key`). That certificate is the device's identity towards an org: IKEv2
public-key authentication, the RadSec client, the session cupsd's IPPS. It is not the Ed25519
`device.key` that signs requests to the cloud (hal/directory/signing.py).

    make_key(path) -> bool                 P-256 key, PEM, 0600, made atomically, never overwritten
    csr(key_path, device_id) -> str        a PEM CSR of that key (the cloud ignores its subject)
    needs_renewal(cert_pem, now) -> bool   missing, unreadable or within `margin_s` of its end
    verify_issued(cert_pem, ca_pem, key_path, device_id, now) -> float
                                           its notAfter, or `CertificateRejected` (why)

Times are unix seconds.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RENEW_MARGIN_S = 8 * 3600


class DeviceCertError(Exception):
    """Base of the device certificate errors; messages name files and reasons, never key material."""


class DeviceKeyError(DeviceCertError):
    """The certificate key file is missing, unreadable or not a P-256 private key."""


class CertificateRejected(DeviceCertError):
    """A certificate the cloud answered is not one this device may use; `reason` says why:
    `unparseable`, `not-a-ca`, `ca-not-valid-now`, `not-signed-by-ca`, `not-our-key`,
    `not-this-device`, `not-valid-now`, `wrong-usage`."""

    def __init__(self, reason: str):
        super().__init__(f"certificate rejected ({reason})")
        self.reason = reason


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_key(path: str | Path) -> bool:
    """Make a P-256 private key at `path` (PKCS#8 PEM, mode 0600) unless something is there
    already (then nothing changes: False); see `write_new_private`."""
    path = Path(path)
    if os.path.lexists(path):
        return False
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return write_new_private(path, pem)


def write_new_private(path: str | Path, data: bytes) -> bool:
    """Write `data` to a new file `path` (mode 0600) unless something is there already (then
    nothing changes: False). It is written to a temporary file and linked into place, so `path` is
    either absent or whole, and a file another process made meanwhile is never replaced. (Also the
    TPM key reference: hal/tpm/keys.py.)"""
    path = Path(path)
    if os.path.lexists(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # unlike rename, fails when `path` appeared meanwhile
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            try:  # a file system without hard links: exclusive create of the final name
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                return False
            with os.fdopen(out, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(path.parent)
    return True


def load_key(key_path: str | Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key at `key_path`; `DeviceKeyError`."""
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeviceKeyError(f"certificate key {key_path} unusable: {type(exc).__name__}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise DeviceKeyError(f"certificate key {key_path} is not a P-256 key")
    return key


def csr(key_path: str | Path, device_id: str) -> str:
    """A PEM certificate request of the key at `key_path`, naming `device_id` (CN and SAN): the
    cloud takes only the key and its proof of possession from it."""
    key = load_key(key_path)
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(device_id)]), critical=False)
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM).decode()


def _load_cert(pem: str | bytes | None) -> x509.Certificate | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        return None


def needs_renewal(cert_pem: str | bytes | None, now: float, margin_s: float = RENEW_MARGIN_S) -> bool:
    """True when there is no readable certificate, or it ends within `margin_s` of `now`."""
    cert = _load_cert(cert_pem)
    return cert is None or cert.not_valid_after_utc.timestamp() - now < margin_s


def _valid_at(cert: x509.Certificate, now: float) -> bool:
    return cert.not_valid_before_utc.timestamp() <= now < cert.not_valid_after_utc.timestamp()


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify_issued(cert_pem: str | bytes, ca_pem: str | bytes, key_path: str | Path | None, device_id: str,
                  now: float, *, public_key_der: bytes | None = None) -> float:
    """Check a certificate the cloud answered before it is used or stored: `ca_pem` is a
    self-signed CA valid now, `cert_pem` is signed by it, certifies our key (the key file at
    `key_path`, or the SubjectPublicKeyInfo `public_key_der` of a key that is no file: one in a
    TPM), names `device_id` (CN and its only SAN dNSName), is valid at `now`, is no CA and allows
    clientAuth. Returns its notAfter; raises `CertificateRejected` (or `DeviceKeyError` for our own
    key)."""
    cert, ca = _load_cert(cert_pem), _load_cert(ca_pem)
    if cert is None or ca is None:
        raise CertificateRejected("unparseable")
    try:
        ca_basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        ca.verify_directly_issued_by(ca)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise CertificateRejected("not-a-ca") from None
    if not ca_basic.ca:
        raise CertificateRejected("not-a-ca")
    if not _valid_at(ca, now):
        raise CertificateRejected("ca-not-valid-now")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise CertificateRejected("not-signed-by-ca") from None
    ours = public_key_der if public_key_der is not None else _spki(load_key(key_path).public_key())
    if _spki(cert.public_key()) != ours:
        raise CertificateRejected("not-our-key")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = names.get_values_for_type(x509.DNSName)
        others = len(list(names)) - len(sans)
    except x509.ExtensionNotFound:
        sans, others = [], 0
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if sans != [device_id] or others or cns != [device_id]:
        raise CertificateRejected("not-this-device")
    if not _valid_at(cert, now):
        raise CertificateRejected("not-valid-now")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CertificateRejected("wrong-usage") from None
    if basic.ca or ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise CertificateRejected("wrong-usage")
    return cert.not_valid_after_utc.timestamp()
