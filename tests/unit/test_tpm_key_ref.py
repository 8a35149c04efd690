"""The TPM key reference and its settings (hal/tpm, issue 18), without a TPM: the reference file's
format, the checks of TCTI, bus and handle, the strongswan.conf section, the CSR mend, the firmware
config keys, and how the tunnel tells a reference from a PEM key."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hal.tpm import (HEADER, KEY_HANDLE, PEM_BEGIN, TpmConfig, TpmKeyError, check_dbus, check_handle, check_tcti,
                     is_tpm_key, parse_ref, read_ref, render_ref)
from hal.tpm.keys import _empty_auth, mend_csr_der
from hal.tunnel import TunnelSetupFailed
from hal.tunnel.charon_conf import strongswan_conf

# a TSS2 loadable-key blob as tpm2_encodeobject writes it (emptyAuth TRUE, parent 0x81000001);
# the key parts are filler: nothing here loads it
BLOB_DER = bytes.fromhex("3017" "06066781050a0103" "a003010101" "020500810000010400" "0400")
BLOB_DER = b"\x30" + bytes([len(BLOB_DER) - 2]) + BLOB_DER[2:]
BLOB = ("-----BEGIN TSS2 PRIVATE KEY-----\n" + base64.b64encode(BLOB_DER).decode()
        + "\n-----END TSS2 PRIVATE KEY-----\n")
LAB = TpmConfig(tcti="tabrmd:bus_type=session", dbus_address="unix:path=/var/tmp/lab/bus", key_handle=0x81010005)


def test_a_reference_round_trips_and_names_how_to_reach_the_tpm(tmp_path):
    text = render_ref(LAB, BLOB)
    assert text.startswith(HEADER + "\n") and PEM_BEGIN in text
    (tmp_path / "ike.key").write_text(text)
    ref = read_ref(tmp_path / "ike.key")
    assert ref.handle == 0x81010005 and ref.token_handle == "81010005"
    assert ref.config == LAB and is_tpm_key(tmp_path / "ike.key")
    # the Pi's: the kernel's resource manager, no bus line
    pi = render_ref(TpmConfig(), BLOB)
    assert "TPM-DBus" not in pi and parse_ref(pi).config == TpmConfig()


def test_a_pem_key_or_nothing_is_no_reference(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ike.key").write_bytes(key)
    assert read_ref(tmp_path / "ike.key") is None and not is_tpm_key(tmp_path / "ike.key")
    assert read_ref(tmp_path / "missing") is None


@pytest.mark.parametrize("head", ["", "TPM-Handle: 0x81010002\n", "TPM-TCTI: device:/dev/tpmrm0\n",
                                  "TPM-Handle: 0x80000001\nTPM-TCTI: device:/dev/tpmrm0\n",
                                  "TPM-Handle: 0x81010002\nTPM-TCTI: cmd:sh -c evil\n",
                                  "TPM-Handle: 0x81010002\nTPM-TCTI: tabrmd:\nTPM-DBus: tcp:host=x\n"])
def test_a_broken_reference_is_an_error_not_a_file_key(tmp_path, head):
    with pytest.raises(TpmKeyError):
        parse_ref(head + BLOB, "ike.key")
    (tmp_path / "ike.key").write_text(head + BLOB)
    assert is_tpm_key(tmp_path / "ike.key")  # so it is never taken for a PEM key


def test_the_checks():
    assert check_tcti("device:/dev/tpmrm0") and check_tcti("mssim:host=localhost,port=2321")
    for bad in ("swtpm:path=/x", "cmd:tpm2_send", "device:/dev/tpmrm0\nx", ""):
        with pytest.raises(ValueError):
            check_tcti(bad)  # charon 5.9.8 takes device, tabrmd and mssim only
    assert check_dbus("") == "" and check_dbus("unix:path=/run/x")
    for bad in ("unix:abstract=x", "unix:path=relative", "unix:path=/a b", "tcp:host=1.2.3.4"):
        with pytest.raises(ValueError):
            check_dbus(bad)
    assert check_handle("0x81010002") == KEY_HANDLE and check_handle("0x817FFFFF") == 0x817FFFFF
    for bad in ("0x80000001", "0x81800000", "81010002", "0x8101000"):
        with pytest.raises(ValueError):
            check_handle(bad)
    with pytest.raises(ValueError):
        TpmConfig(key_handle=0x81000001)  # the storage key's


def test_the_environment_and_the_charon_section():
    assert TpmConfig().env() == {"TPM2TOOLS_TCTI": "device:/dev/tpmrm0", "TPM2OPENSSL_TCTI": "device:/dev/tpmrm0"}
    assert TpmConfig().charon_env() == {}
    assert LAB.charon_env() == {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/var/tmp/lab/bus"}
    conf = strongswan_conf("libipsec", tpm=LAB)
    load = next(line for line in conf.splitlines() if line.strip().startswith("load ="))
    assert load.split()[-1] == "tpm"
    assert "name = tabrmd" in conf and 'opts = "bus_type=session"' in conf and "use_rng = no" in conf
    assert "tpm" not in strongswan_conf("libipsec").split("load =")[1].splitlines()[0]


def _csr_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    req = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mfp-1.space-1")]))
           .sign(key, hashes.SHA256()))
    return req.public_bytes(serialization.Encoding.DER)


def test_the_csr_mend_puts_the_algorithm_as_rfc_5758_says():
    good = _csr_der()
    alg = bytes.fromhex("300a06082a8648ce3d040302")
    # as tpm2-openssl 1.1.1 writes it: a NULL parameter, the outer length two more
    body = good[4:] if good[1] == 0x82 else good[3:]
    bad_body = body.replace(alg, bytes.fromhex("300c06082a8648ce3d0403020500"), 1)
    n = len(bad_body)
    bad = b"\x30" + (bytes([0x81, n]) if n < 256 else bytes([0x82, n >> 8, n & 0xFF])) + bad_body
    with pytest.raises(ValueError):
        x509.load_der_x509_csr(bad)  # cryptography refuses it
    mended = mend_csr_der(bad)
    assert mended == good and x509.load_der_x509_csr(mended).is_signature_valid
    assert mend_csr_der(good) == good


def test_empty_auth_is_read_from_the_blob():
    assert _empty_auth(BLOB)
    false = BLOB_DER.replace(bytes.fromhex("a003010101"), bytes.fromhex("a003010100"))
    assert not _empty_auth("-----BEGIN TSS2 PRIVATE KEY-----\n" + base64.b64encode(false).decode()
                           + "\n-----END TSS2 PRIVATE KEY-----\n")


def test_the_firmware_config_keys():
    from firmware.config import ConfigError, device_tpm, from_dict

    assert device_tpm(from_dict({})) is None  # the file key store is the default
    cfg = from_dict({"device": {"key_store": "tpm", "tpm_tcti": "tabrmd:bus_type=session",
                                "tpm_dbus": "unix:path=/var/tmp/lab/bus", "tpm_handle": "0x81010005"}})
    assert device_tpm(cfg) == LAB
    assert device_tpm(from_dict({"device": {"key_store": "tpm"}})) == TpmConfig()
    for bad in ({"key_store": "hsm"}, {"tpm_tcti": "swtpm:path=/x"}, {"tpm_handle": "0x80000001"},
                {"tpm_dbus": "tcp:host=x"}, {"tpm": "x"}):
        with pytest.raises(ConfigError):
            from_dict({"device": bad})


def test_the_tunnel_tells_a_reference_from_a_pem_key():
    from hal.tunnel.vici_tunnel import _tpm_ref

    assert _tpm_ref(render_ref(LAB, BLOB).encode(), "ike.key").handle == 0x81010005
    assert _tpm_ref(b"-----BEGIN PRIVATE KEY-----\n...", "ike.key") is None
    with pytest.raises(TunnelSetupFailed) as err:
        _tpm_ref(("TPM-Handle: 0x1\n" + BLOB).encode(), "ike.key")
    assert err.value.cause == "config"
