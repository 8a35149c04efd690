"""Pure tests of the directory's formats: the signed message, profile split/join, envelope crypto."""

from __future__ import annotations

import copy

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hal.directory.signing import H_SIGNATURE, sign_headers, signed_message


def _profile():
    return {"org_id": "acme", "ttl_s": 300,
            "vpn": {"gateway": "10.78.0.11", "port": 500, "local_id": "m", "remote_id": "gw", "auth": "psk",
                    "psk": "s3cret-psk", "ca_cert_pem": None, "ike_proposals": ["aes256gcm16-prfsha384-x25519"],
                    "esp_proposals": ["aes256gcm16"], "remote_ts": ["10.20.0.0/24"], "dpd_delay_s": 1},
            "auth": {"kind": "radius", "host": "10.20.0.50", "port": 1812, "secret": "s3cret-radius",
                     "user_format": "{user}@{org}", "timeout_s": 3.0, "retries": 2},
            "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False}}


def test_signed_message_binds_every_field():
    base = ("GET", "/v1/orgs/acme/profile", b"", 1700000000, "0" * 32, "mfp-1")
    msgs = {signed_message(*base)}
    for i, alt in enumerate(("POST", "/v1/orgs/globex/profile", b"x", 1700000001, "1" * 32, "mfp-2")):
        args = list(base)
        args[i] = alt
        msgs.add(signed_message(*args))
    assert len(msgs) == 7


def test_sign_headers_verify_and_fresh_nonces():
    key = Ed25519PrivateKey.generate()
    h1 = sign_headers(key, "mfp-1", "GET", "/p", b"", now=1700000000)
    h2 = sign_headers(key, "mfp-1", "GET", "/p", b"", now=1700000000)
    assert h1["X-TP-Nonce"] != h2["X-TP-Nonce"]
    import base64
    key.public_key().verify(base64.b64decode(h1[H_SIGNATURE]),
                            signed_message("GET", "/p", b"", 1700000000, h1["X-TP-Nonce"], "mfp-1"))


def test_profile_split_keeps_secrets_out_of_the_public_part():
    from cloud import profiles
    wire = profiles.normalize(_profile())
    public, secret = profiles.split(wire)
    assert "s3cret" not in repr(public) and b"s3cret-psk" in secret
    assert profiles.join(public, secret) == wire
    assert profiles.secret_names(public) == ["vpn.psk", "auth.secret"]


def test_envelope_round_trip_and_binding(tmp_path):
    from cloud.crypto import DecryptError, Keyring, new_kek, write_kek_file
    path = tmp_path / "kek"
    write_kek_file(path, [new_kek()])
    ring = Keyring(path)
    sealed = ring.seal(b"plain", b"org-a")
    assert ring.open(sealed, b"org-a") == b"plain"
    with pytest.raises(DecryptError):
        ring.open(sealed, b"org-b")
    tampered = copy.copy(sealed)
    tampered.ciphertext = sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1])
    with pytest.raises(DecryptError):
        ring.open(tampered, b"org-a")


def test_a_p256_device_key_signs_and_verifies_like_ed25519():
    """A device whose key is in a TPM signs with P-256 (a TPM has no Ed25519): enrolled as its
    65-byte uncompressed point, its signatures verify, another key's do not."""
    import base64

    import pytest
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    from hal.directory.signing import (H_NONCE, H_SIGNATURE, H_TIMESTAMP, load_public_key, public_key_b64,
                                       sign_headers, signed_message, verify)

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    raw = base64.b64decode(public_key_b64(key))
    assert len(raw) == 65 and raw[0] == 4
    h = sign_headers(key, "mfp-1.space-1", "GET", "/v1/orgs/acme/profile", b"")
    msg = signed_message("GET", "/v1/orgs/acme/profile", b"", int(h[H_TIMESTAMP]), h[H_NONCE], "mfp-1.space-1")
    verify(load_public_key(raw), base64.b64decode(h[H_SIGNATURE]), msg)
    with pytest.raises(InvalidSignature):
        verify(load_public_key(base64.b64decode(public_key_b64(other))), base64.b64decode(h[H_SIGNATURE]), msg)
    with pytest.raises(InvalidSignature):
        verify(load_public_key(raw), b"\x30\x06\x02\x01\x01\x02\x01\x01", msg)
    for bad in (b"", b"\x04" * 33, b"\x02" + raw[1:33], b"\x04" + b"\x00" * 64):
        with pytest.raises(ValueError):
            load_public_key(bad)
