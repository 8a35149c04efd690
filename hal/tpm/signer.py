"""The device's cloud-signing key inside the TPM (issue 18: "enrolment, cloud signing, IKE and TLS
client use it there").

A TPM 2.0 has no Ed25519, so a device whose key store is the TPM enrols a P-256 key for its requests
to the cloud (hal/directory/signing.py takes both). It is made like the certificate key
(`hal.tpm.keys.make_key`), at its own handle `CLOUD_KEY_HANDLE`, and `device.key` is then its
reference file. `TpmSigner.sign` signs one request inside the TPM (OpenSSL's `tpm2` provider, one
`openssl dgst` process: about as long as the TPM takes, tens of milliseconds on swtpm; a real chip
is slower), answering a DER ECDSA-SHA256 signature; `public_key()` is the key the TPM holds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from hal.tpm import TpmError, TpmKeyRef, TpmUnavailable

CLOUD_KEY_HANDLE = 0x81010003
_TIMEOUT_S = 30


class TpmSigner:
    def __init__(self, ref: TpmKeyRef):
        self.ref = ref
        self._public = None

    def public_key(self):
        """The key as the TPM holds it (read when first asked: two tool runs, ~0.1 s; a lookup
        needs only `sign`)."""
        if self._public is None:
            from hal.tpm.keys import public_key_der

            self._public = serialization.load_der_public_key(public_key_der(self.ref))
        return self._public

    def sign(self, message: bytes) -> bytes:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", **self.ref.config.env()}
        try:
            proc = subprocess.run(["openssl", "dgst", "-sha256", "-provider", "tpm2", "-provider", "default",
                                   "-propquery", "?provider=tpm2",
                                   "-sign", str(self.ref.path)], input=message, env=env, capture_output=True,
                                  timeout=_TIMEOUT_S)
        except FileNotFoundError:
            raise TpmUnavailable("sign a request: openssl is not installed") from None
        except subprocess.TimeoutExpired:
            raise TpmUnavailable(f"sign a request: no signature in {_TIMEOUT_S} s") from None
        if proc.returncode != 0 or not proc.stdout:
            last = (proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise TpmError(f"sign a request in the TPM: {last[:200]}")
        return proc.stdout


def make_cloud_key(path: str | Path, config) -> bool:
    """The cloud-signing key inside the TPM, its reference at `path` (`hal.tpm.keys.make_key` at
    `CLOUD_KEY_HANDLE`)."""
    from dataclasses import replace

    from hal.tpm.keys import make_key

    return make_key(path, replace(config, key_handle=CLOUD_KEY_HANDLE))
