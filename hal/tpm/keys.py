"""The device key inside the TPM: made there, its public key, a certificate request signed by it.

    make_key(path, config) -> bool     the key in the TPM, its reference file at `path` (never replaced)
    public_key_der(ref) -> bytes       its SubjectPublicKeyInfo (DER), read from the TPM
    csr(ref, device_id) -> str         a PEM CSR signed inside the TPM (what cloud/device_ca.py takes)

They run tpm2-tools and openssl (with the `tpm2` provider) as programs with the TCTI in their
environment, so the TPM must be behind a resource manager (`/dev/tpmrm0`, tpm2-abrmd): without one,
each program's transient objects stay loaded and the TPM runs out of object slots after a few calls
(measured with swtpm: "out of memory for object contexts" at the fourth). Measured on swtpm behind
tpm2-abrmd (x86-64 VM): making the key (storage key present) ~85 ms, a CSR ~25 ms.

Key attributes: fixedTPM, fixedParent (never duplicated out), sensitiveDataOrigin (made inside),
userWithAuth with an empty auth value and noDA (a daemon uses it unattended: what protects it is
that it cannot leave this TPM), sign only, scheme ECDSA-SHA256 (IKEv2, TLS 1.2/1.3 and the CSR all
sign with it).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path

from hal.tpm import (PEM_BEGIN, PEM_END, TpmConfig, TpmError, TpmKeyError, TpmKeyRef, TpmUnavailable,
                     parse_ref, render_ref)

log = logging.getLogger("tenantprint.hal.tpm")

KEY_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|sign"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
# ecdsa-with-SHA256 as tpm2-openssl 1.1.1 writes it (with a NULL parameter, against RFC 5758 3.2)
# and as it must be (no parameter): `cryptography` refuses the first, so the CSR is mended
_ECDSA_SHA256_NULL = bytes.fromhex("300c06082a8648ce3d0403020500")
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_TIMEOUT_S = 30


def _run(args: list[str], config: TpmConfig, what: str, *, check: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", **config.env()}
    try:
        proc = subprocess.run(args, env=env, capture_output=True, timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise TpmUnavailable(f"{what}: {args[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise TpmUnavailable(f"{what}: {args[0]} did not finish in {_TIMEOUT_S} s (TPM {config.tcti!r})") from None
    if check and proc.returncode != 0:
        raise _failure(what, proc, config)
    return proc


def _failure(what: str, proc: subprocess.CompletedProcess, config: TpmConfig) -> TpmError:
    text = proc.stderr.decode(errors="replace")
    last = [line for line in text.strip().splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
    if re.search(r"tcti|Could not load|Failed to connect|IO failure|No such file", text, re.I):
        return TpmUnavailable(f"{what}: TPM {config.tcti!r} unreachable: {last[0][:200]}")
    return TpmError(f"{what}: {last[0][:200]}")


def _present(handle: int, config: TpmConfig) -> bool:
    proc = _run(["tpm2_readpublic", "-c", f"0x{handle:08x}"], config, "read a persistent handle", check=False)
    if proc.returncode == 0:
        return True
    err = _failure("read a persistent handle", proc, config)
    if isinstance(err, TpmUnavailable):
        raise err
    return False


def _empty_auth(pem: str) -> bool:
    """Whether a TSS2 PEM blob says its key needs no auth value (`emptyAuth` TRUE)."""
    body = pem.split(PEM_BEGIN, 1)[1].split(PEM_END, 1)[0]
    der = base64.b64decode("".join(body.split()))
    at = der.find(bytes.fromhex("06066781050a0103"))  # the loadable-key OID, 2.23.133.10.1.3
    tail = der[at + 8:at + 13] if at >= 0 else b""
    return len(tail) == 5 and tail[:4] == bytes.fromhex("a0030101") and tail[4] != 0


def ensure_storage_key(config: TpmConfig, work: Path) -> None:
    """The storage root key (ECC P-256, AES-128-CFB, the TCG's template) at `config.srk_handle`:
    made and persisted unless something is there already."""
    if _present(config.srk_handle, config):
        return
    ctx = work / "srk.ctx"
    _run(["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb", "-c", str(ctx)],
         config, "make the storage key")
    _run(["tpm2_evictcontrol", "-Q", "-C", "o", "-c", str(ctx), f"0x{config.srk_handle:08x}"],
         config, "persist the storage key")
    log.info("TPM storage key made at 0x%08x", config.srk_handle)


def make_key(path: str | Path, config: TpmConfig) -> bool:
    """Make the device's P-256 signing key inside the TPM and write its reference file at `path`
    (mode 0600, linked into place whole) unless something is there already (then nothing changes:
    False). A key left at `config.key_handle` without its file (an SD card written anew) is evicted
    first: without its file it cannot be used, and the cloud refuses a certificate for a new key of
    an enrolled device (its first certificate pinned the key): it is revoked and enrolled anew."""
    path = Path(path)
    if os.path.lexists(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, srk = f"0x{config.key_handle:08x}", f"0x{config.srk_handle:08x}"
    with tempfile.TemporaryDirectory(prefix=".tpm-", dir=path.parent) as tmp:
        work = Path(tmp)
        ensure_storage_key(config, work)
        pub, priv, ctx, pem = work / "key.pub", work / "key.priv", work / "key.ctx", work / "key.pem"
        _run(["tpm2_create", "-Q", "-C", srk, "-G", "ecc256:ecdsa-sha256", "-a", KEY_ATTRIBUTES,
              "-u", str(pub), "-r", str(priv)], config, "make the key")
        encode = ["tpm2_encodeobject", "-C", srk, "-u", str(pub), "-r", str(priv), "-o", str(pem)]
        _run(encode, config, "encode the key")
        if not _empty_auth(pem.read_text()):
            # tpm2-tools 5.4 (Debian 12) inverts -p: without it the blob claims an auth value
            # (emptyAuth FALSE) and OpenSSL asks for a pass phrase; fixed in 5.5
            _run(encode + ["-p"], config, "encode the key")
        if not _empty_auth(pem.read_text()):
            raise TpmError("encode the key: tpm2_encodeobject wrote a blob that asks for an auth value")
        if _present(config.key_handle, config):
            log.warning("TPM handle %s held a key without its reference file: evicted", handle)
            _run(["tpm2_evictcontrol", "-Q", "-C", "o", "-c", handle], config, "evict the old key")
        _run(["tpm2_load", "-Q", "-C", srk, "-u", str(pub), "-r", str(priv), "-c", str(ctx)], config, "load the key")
        _run(["tpm2_evictcontrol", "-Q", "-C", "o", "-c", str(ctx), handle], config, "persist the key")
        text = render_ref(config, pem.read_text())
        from hal.directory.device_cert import write_new_private

        return write_new_private(path, text.encode())  # never over a reference another process made


def _pem_der(text: str, label: str) -> bytes:
    m = re.search(rf"-----BEGIN {label}-----(.*?)-----END {label}-----", text, re.S)
    if not m:
        raise TpmError(f"no {label} in the output")
    return base64.b64decode("".join(m.group(1).split()))


def public_key_der(ref: TpmKeyRef) -> bytes:
    """The key's SubjectPublicKeyInfo (DER) as the TPM has it at the reference's handle (what charon
    signs with), checked against the reference file's blob (what TLS signs with): `TpmKeyError`
    when they differ or the handle holds nothing (another TPM, an evicted key)."""
    config = ref.config
    held = _run(["tpm2_readpublic", "-c", f"0x{ref.handle:08x}", "-f", "pem", "-o", "/dev/stdout"],
                config, "read the key's public part", check=False)
    if held.returncode != 0:
        err = _failure("read the key's public part", held, config)
        if isinstance(err, TpmUnavailable):
            raise err
        raise TpmKeyError(f"the TPM holds no key at 0x{ref.handle:08x} (another TPM, or evicted)")
    spki = _pem_der(held.stdout.decode(errors="replace"), "PUBLIC KEY")
    blob = _run(["openssl", "pkey", "-provider", "tpm2", "-provider", "base", "-in", str(ref.path), "-pubout"],
                config, "read the blob's public part", check=False)
    if blob.returncode != 0:
        raise TpmKeyError(f"key reference {ref.path}: this TPM cannot load its blob "
                          f"({_failure('load', blob, config)})")
    if _pem_der(blob.stdout.decode(errors="replace"), "PUBLIC KEY") != spki:
        raise TpmKeyError(f"key reference {ref.path}: its blob and 0x{ref.handle:08x} are different keys")
    return spki


def mend_csr_der(der: bytes) -> bytes:
    """A CSR with tpm2-openssl 1.1.1's `ecdsa-with-SHA256 + NULL` signature algorithm written as
    RFC 5758 3.2 says (no parameter). The signature covers only the request info, so it still holds."""
    body = _der_content(der)
    info = _der_total(body)
    alg_end = info + _der_total(body[info:])
    if body[info:alg_end] != _ECDSA_SHA256_NULL:
        return der
    body = body[:info] + _ECDSA_SHA256 + body[alg_end:]
    return b"\x30" + _der_len(len(body)) + body


def _der_content(der: bytes) -> bytes:
    if der[0] != 0x30:
        raise TpmError("a CSR is not a DER SEQUENCE")
    n = der[1]
    if n < 0x80:
        return der[2:2 + n]
    k = n & 0x7F
    length = int.from_bytes(der[2:2 + k], "big")
    return der[2 + k:2 + k + length]


def _der_total(der: bytes) -> int:
    n = der[1]
    if n < 0x80:
        return 2 + n
    k = n & 0x7F
    return 2 + k + int.from_bytes(der[2:2 + k], "big")


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def csr(ref: TpmKeyRef | str | Path, device_id: str) -> str:
    """A PEM certificate request of the TPM key, signed inside the TPM, naming `device_id` (CN and
    SAN dNSName): what `cloud/device_ca.py` takes (it uses only the key and the signature)."""
    if not isinstance(ref, TpmKeyRef):
        ref = _ref(ref)
    if not _DEVICE_ID.match(device_id):
        raise TpmError("a device id for a CSR must be letters, digits, '.', '_' or '-'")
    proc = _run(["openssl", "req", "-new", "-provider", "tpm2", "-provider", "default", "-key", str(ref.path),
                 "-subj", f"/CN={device_id}", "-addext", f"subjectAltName=DNS:{device_id}", "-sha256",
                 "-outform", "DER"], ref.config, "sign a certificate request in the TPM")
    der = mend_csr_der(proc.stdout)
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{lines}\n-----END CERTIFICATE REQUEST-----\n"


def _ref(path: str | Path) -> TpmKeyRef:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise TpmKeyError(f"key reference {path}: {exc.strerror or exc}") from None
    ref = parse_ref(text, path)
    if ref is None:
        raise TpmKeyError(f"{path} is not a TPM key reference")
    return ref
