"""The device's certificate from its space's CA, kept current (issue 18).

    state = ensure(cfg, client, time.time())     # at boot, then every hour (the runtime calls it)

In the device state dir (`cfg.device.state_dir`):

    ike.key          P-256 private key, made here on first call, 0600, never replaced; with
                     `device.key_store = "tpm"` the key is made inside the TPM 2.0 and this file is
                     its reference (hal/tpm: a TSS2 blob only that TPM can load, and its handle)
    device-cert.pem  the device certificate (24 h, names the device), 0644
    space-ca.pem     the space's device CA that issued it, 0644

`ensure` renews the certificate when it is missing, does not match the key, the CA or the device,
or ends within `RENEW_MARGIN_S` (8 h): so a device that is up renews about every 16 h and a cloud
outage of up to 8 h costs nothing. It never raises for the cloud: an unreachable or refusing cloud,
or an answer that is not a certificate for this device and key, currently valid, chaining to the CA
it came with, leaves the files as they were and comes back as a `CertState` saying why (`usable`
tells whether the certificate in place is still good). Only local faults (the state dir cannot be
written, the TPM cannot be reached) come back as `failed`, never as an exception either.

The kind of key in place decides how it is used (a TPM reference works whatever the config says);
the config decides how a missing key is made. A file key in place while the config says `tpm` is
`failed` (`file-key-in-tpm-mode`): the key would stay on the SD card; an admin moves it away (the
cloud then refuses a certificate for the new key: the first one pinned the key; revoke, enrol anew).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from firmware.config import DEVICE_CERT_FILE, DEVICE_KEY_FILE, SPACE_CA_FILE, device_tpm
from hal.directory import DirectoryError, DirectoryRefused
from hal.directory.device_cert import (
    RENEW_MARGIN_S,
    CertificateRejected,
    DeviceCertError,
    DeviceKeyError,
    csr,
    make_key,
    verify_issued,
)
from hal.tpm import TpmError, TpmKeyRef, read_ref

log = logging.getLogger("tenantprint.firmware.device_cert")
KEY_NAME, CERT_NAME, CA_NAME = DEVICE_KEY_FILE, DEVICE_CERT_FILE, SPACE_CA_FILE

# statuses
CURRENT, RENEWED = "current", "renewed"
NOT_ENROLLED, UNREACHABLE, REFUSED, REJECTED, FAILED = "not-enrolled", "unreachable", "refused", "rejected", "failed"


@dataclass(frozen=True)
class CertState:
    """The outcome of one `ensure`. `status`: `current` (nothing to do), `renewed`, `not-enrolled`,
    `unreachable` (cloud down, rate limited, or a client fault), `refused` (the cloud said no:
    `reason` `http-401` revoked/unknown device, `http-403` CSR refused), `rejected` (the cloud's
    answer failed a check: `reason` names it) or `failed` (local: key or files). `not_after`: the
    end of the certificate in place, None when no usable one is."""
    status: str
    reason: str
    not_after: float | None
    key_path: Path
    cert_path: Path
    ca_path: Path

    @property
    def usable(self) -> bool:
        """A certificate valid at the time of the call is in place (`cert_path`, `ca_path`)."""
        return self.not_after is not None


def _where(cfg_or_state_dir) -> tuple[Path, str]:
    """(state dir, device id) from a `FirmwareConfig` or a state dir holding `enrolment.json`."""
    device = getattr(cfg_or_state_dir, "device", None)
    if device is not None:
        return Path(device.state_dir), device.device_id or ""
    state = Path(cfg_or_state_dir)
    try:
        record = json.loads((state / "enrolment.json").read_text())
        device_id = record.get("device_id", "") if isinstance(record, dict) else ""
    except (OSError, ValueError):
        device_id = ""
    return state, device_id if isinstance(device_id, str) else ""


def _write_public(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _in_place(key: Path, cert: Path, ca: Path, device_id: str, now: float) -> float | None:
    """The notAfter of the stored certificate when it is still good for this key, CA and device."""
    try:
        return _verify(cert.read_text(), ca.read_text(), key, device_id, now)
    except (OSError, ValueError, DeviceCertError, TpmError):
        return None


def _verify(cert_pem: str, ca_pem: str, key: Path, device_id: str, now: float) -> float:
    """`verify_issued` for the key at `key`, a file key or a TPM key reference."""
    ref = read_ref(key)
    if ref is None:
        return verify_issued(cert_pem, ca_pem, key, device_id, now)
    return _verify_for_tpm_key(cert_pem, ca_pem, ref, device_id, now)


def _verify_for_tpm_key(cert_pem: str, ca_pem: str, ref: TpmKeyRef, device_id: str, now: float) -> float:
    """`verify_issued` with "our key" the TPM's public key (a TPM key has no private key file)."""
    from hal.tpm.keys import public_key_der

    return verify_issued(cert_pem, ca_pem, None, device_id, now, public_key_der=public_key_der(ref))


def _make_key(cfg_or_state_dir, key: Path) -> tuple[bool, str]:
    """Make the key if it is missing (in the TPM when the config says so). (made, why it cannot be
    used: "" when it can). Raises OSError or TpmError."""
    tpm = device_tpm(cfg_or_state_dir) if hasattr(cfg_or_state_dir, "device") else None
    if tpm is not None:
        from hal.tpm.keys import make_key as make_tpm_key

        made = make_tpm_key(key, tpm)
    else:
        made = make_key(key)
    if tpm is not None and read_ref(key) is None:
        return made, "file-key-in-tpm-mode"
    return made, ""


def _csr(key: Path, device_id: str) -> str:
    ref = read_ref(key)
    if ref is None:
        return csr(key, device_id)
    from hal.tpm.keys import csr as tpm_csr

    return tpm_csr(ref, device_id)


def ensure(cfg_or_state_dir, client, now: float, *, margin_s: float = RENEW_MARGIN_S) -> CertState:
    """Make the certificate key if missing and renew the certificate when due (see the module
    docstring); `client`: a `DirectoryClient` of this device (anything with `device_certificate`)."""
    state, device_id = _where(cfg_or_state_dir)
    key, cert, ca = state / KEY_NAME, state / CERT_NAME, state / CA_NAME

    def result(status: str, reason: str, not_after: float | None) -> CertState:
        return CertState(status, reason, not_after, key, cert, ca)

    if not device_id or not hasattr(client, "device_certificate"):
        return result(NOT_ENROLLED, "no enrolment record or no directory client", None)
    try:
        made, unusable = _make_key(cfg_or_state_dir, key)
        if made:
            log.info("certificate key made (%s%s)", key, ", in the TPM" if read_ref(key) else "")
    except OSError as exc:
        return result(FAILED, f"key: {exc.strerror or type(exc).__name__}", None)
    except TpmError as exc:
        log.warning("certificate key: %s", exc)
        return result(FAILED, f"tpm: {exc}", None)
    if unusable:
        log.warning("certificate key %s is a file while device.key_store is tpm: not used", key)
        return result(FAILED, unusable, None)
    current = _in_place(key, cert, ca, device_id, now)
    if current is not None and current - now >= margin_s:
        return result(CURRENT, "", current)
    try:
        request = _csr(key, device_id)
    except (DeviceKeyError, TpmError) as exc:
        return result(FAILED, str(exc), current)
    try:
        issued = client.device_certificate(request)
    except DirectoryRefused as exc:
        log.warning("certificate request refused (HTTP %s)", exc.status)
        return result(REFUSED, f"http-{exc.status}", current)
    except DirectoryError as exc:
        log.info("certificate not renewed: %s", exc)
        return result(UNREACHABLE, type(exc).__name__, current)
    except Exception as exc:  # a client fault must not stop the caller's timer; the reason says what
        log.warning("certificate request failed: %s", type(exc).__name__)
        return result(UNREACHABLE, type(exc).__name__, current)
    try:
        not_after = _verify(issued.certificate_pem, issued.ca_pem, key, device_id, now)
    except CertificateRejected as exc:
        log.warning("certificate from the cloud rejected (%s)", exc.reason)
        return result(REJECTED, exc.reason, current)
    except (DeviceCertError, AttributeError, TypeError) as exc:
        return result(REJECTED, type(exc).__name__, current)
    except TpmError as exc:
        return result(FAILED, f"tpm: {exc}", current)
    try:
        _write_public(ca, issued.ca_pem)  # the CA first: a certificate that is in place chains to it
        _write_public(cert, issued.certificate_pem)
    except OSError as exc:
        return result(FAILED, f"write: {exc.strerror or type(exc).__name__}", _in_place(key, cert, ca, device_id, now))
    log.info("device certificate renewed, valid until %d", not_after)
    return result(RENEWED, "", not_after)
