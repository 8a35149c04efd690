"""firmware.device_cert's checks of an issued certificate for a TPM key (issue 18) against
hal.directory.device_cert.verify_issued's for a file key: the same certificates, the same verdicts
(`_verify_for_tpm_key` gives verify_issued the TPM's public key as "ours"). The TPM's public key is
given here (no TPM needed: tests/integration/test_tpm_device_key.py reads it from a real one)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from firmware.device_cert import _verify_for_tpm_key
from hal.directory.device_cert import CertificateRejected, make_key, verify_issued
from hal.tpm import TpmKeyRef

from test_device_cert import DEVICE, HOUR, NOW, issue, make_ca, pem


def _cases(ca, other_ca, ours):
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    not_ca = make_ca(ca=False)
    return [
        (issue(ca, ours), pem(ca[1]), NOW),
        (issue(ca, ours, name="mfp-2.space-1"), pem(ca[1]), NOW),
        (issue(ca, ours, sans=[x509.DNSName(DEVICE), x509.DNSName("gw.acme")]), pem(ca[1]), NOW),
        (issue(ca, ours, sans=[x509.DNSName(DEVICE), x509.RFC822Name("a@b")]), pem(ca[1]), NOW),
        (issue(ca, ours, sans=[]), pem(ca[1]), NOW),
        (issue(ca, stranger), pem(ca[1]), NOW),
        (issue(ca, ours, signer=other_ca[0]), pem(ca[1]), NOW),
        (issue(other_ca, ours), pem(ca[1]), NOW),
        (issue(ca, ours, start=NOW - 25 * HOUR), pem(ca[1]), NOW),
        (issue(ca, ours, start=NOW + HOUR), pem(ca[1]), NOW),
        (issue(ca, ours, is_ca=True), pem(ca[1]), NOW),
        (issue(ca, ours, eku=()), pem(ca[1]), NOW),
        (issue(ca, ours, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)), pem(ca[1]), NOW),
        ("", pem(ca[1]), NOW),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", pem(ca[1]), NOW),
        (issue(not_ca, ours), pem(not_ca[1]), NOW),
        (issue(ca, ours), issue(ca, ours), NOW),
        (issue(ca, ours, start=NOW + 4000 * 86400), pem(ca[1]), NOW + 4000 * 86400),
    ]


def _verdict(fn, *args):
    try:
        return fn(*args)
    except CertificateRejected as exc:
        return exc.reason


def test_the_tpm_key_checks_give_the_file_key_checks_verdicts(tmp_path, monkeypatch):
    path = tmp_path / "ike.key"
    make_key(path)
    ours = serialization.load_pem_private_key(path.read_bytes(), None).public_key()
    spki = ours.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setattr("hal.tpm.keys.public_key_der", lambda ref: spki)  # the TPM's answer, given
    ref = TpmKeyRef(Path("ike.key"), 0x81010002, "device:/dev/tpmrm0")
    verdicts = []
    for cert, ca, now in _cases(make_ca(), make_ca(), ours):
        file_key = _verdict(verify_issued, cert, ca, path, DEVICE, now)
        tpm_key = _verdict(_verify_for_tpm_key, cert, ca, ref, DEVICE, now)
        assert tpm_key == file_key
        verdicts.append(file_key)
    assert verdicts[0] == NOW + 24 * HOUR
    assert {"not-this-device", "not-our-key", "not-signed-by-ca", "not-valid-now", "wrong-usage", "unparseable",
            "not-a-ca", "ca-not-valid-now"} <= set(verdicts)


def test_ensure_in_tpm_mode_refuses_a_file_key_in_place(tmp_path):
    from types import SimpleNamespace

    from firmware.device_cert import FAILED, ensure

    (tmp_path / "enrolment.json").write_text('{"device_id": "mfp-1.space-1"}')
    make_key(tmp_path / "ike.key")
    cfg = SimpleNamespace(device=SimpleNamespace(state_dir=str(tmp_path), device_id=DEVICE, key_store="tpm",
                                                 tpm_tcti="device:/dev/tpmrm0", tpm_dbus="", tpm_handle="0x81010002"))

    class Cloud:
        def device_certificate(self, csr_pem):
            raise AssertionError("no request for a key that stays on the SD card")

    state = ensure(cfg, Cloud(), NOW)
    assert (state.status, state.reason) == (FAILED, "file-key-in-tpm-mode")
