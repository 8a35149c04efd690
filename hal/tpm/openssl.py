"""OpenSSL's `tpm2` provider (tpm2-openssl) in this process, for Python's `ssl` (RadSec, LDAP TLS).

Python's `ssl` names no provider or engine, but it uses the system's libcrypto (OpenSSL 3.0 on
Debian 12), whose default library context takes providers at run time: `load_provider(config)`
loads `tpm2` (and `default`) into it, with the TCTI in `TPM2OPENSSL_TCTI`. Then
`SSLContext.load_cert_chain(certfile, keyfile=<the key reference file>)` reads the TSS2 blob.

Measured here (OpenSSL 3.0.19, tpm2-openssl 1.1.1, swtpm behind tpm2-abrmd): that alone is not
enough. OpenSSL 3.0 fetches an operation's implementation before it looks at the key's provider:
with `default` loaded first (Python loads it before us), the key is decoded into `default`'s EC key
management as its public half only, and the handshake's CertificateVerify fails ("missing private
key", Python: "EVP lib"). Loading `tpm2` first instead makes every fetch prefer the TPM, hashlib's
too (200 SHA-256 took 417 ms instead of 0.2 ms). What works: prefer `tpm2` (`?provider=tpm2`, a
preference, not a requirement) only while the key is loaded and while a handshake signs with it
(`tpm_preferred()`), then go back to the default. A TLS 1.3 handshake with client authentication
then takes 60-110 ms instead of ~4 ms (the transcript hashes and the key exchange run in the TPM
while the preference holds); RadSec keeps one connection per session, so it is paid once a session.

The preference is process-wide while it holds (a lock makes the holders take turns): another thread
fetching an algorithm meanwhile gets the TPM's implementation, which computes the same result,
slower. Nothing else in the firmware's processes uses the system libcrypto for bulk work
(`cryptography` carries its own).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading

from hal.tpm import TpmConfig, TpmUnavailable

_lock = threading.RLock()
_loaded: dict[str, str] = {}  # provider name -> the TCTI it was loaded with
_lib = None


def _crypto():
    global _lib
    if _lib is None:
        import ssl  # noqa: F401  (libcrypto as Python's ssl links it, loaded once)

        name = "libcrypto.so.3"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            found = ctypes.util.find_library("crypto")
            if not found:
                raise TpmUnavailable("libcrypto (OpenSSL 3) is not found") from None
            lib = ctypes.CDLL(found)
        lib.OSSL_PROVIDER_load.restype = ctypes.c_void_p
        lib.OSSL_PROVIDER_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.EVP_set_default_properties.restype = ctypes.c_int
        lib.EVP_set_default_properties.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.ERR_clear_error.restype = None
        _lib = lib
    return _lib


def load_provider(config: TpmConfig) -> None:
    """Load the `default` and `tpm2` providers into this process's default library context (once;
    the first TCTI wins: a process talks to one TPM). `TpmUnavailable` when tpm2-openssl is not
    installed or cannot reach the TPM."""
    with _lock:
        if "tpm2" in _loaded:
            if _loaded["tpm2"] != config.tcti:
                raise TpmUnavailable(f"this process uses the TPM at {_loaded['tpm2']!r} already")
            return
        lib = _crypto()
        os.environ["TPM2OPENSSL_TCTI"] = config.tcti  # read by the provider when it loads
        if not lib.OSSL_PROVIDER_load(None, b"default"):
            lib.ERR_clear_error()
            raise TpmUnavailable("OpenSSL's default provider did not load")
        if not lib.OSSL_PROVIDER_load(None, b"tpm2"):
            lib.ERR_clear_error()
            raise TpmUnavailable(f"OpenSSL's tpm2 provider did not load (tpm2-openssl installed? TPM "
                                 f"{config.tcti!r} reachable?)")
        _loaded["tpm2"] = config.tcti


@contextlib.contextmanager
def tpm_preferred():
    """While inside: this process's OpenSSL prefers the `tpm2` provider's implementations (see the
    module docstring). Holders take turns."""
    with _lock:
        lib = _crypto()
        if lib.EVP_set_default_properties(None, b"?provider=tpm2") != 1:
            lib.ERR_clear_error()
            raise TpmUnavailable("OpenSSL refused the provider preference")
        try:
            yield
        finally:
            lib.EVP_set_default_properties(None, b"")


def load_key_into(ctx, certfile: str, keyfile: str, config: TpmConfig) -> None:
    """`ctx.load_cert_chain(certfile, keyfile)` for a key reference file: the provider loaded, the
    blob decoded by the `tpm2` provider."""
    load_provider(config)
    with tpm_preferred():
        ctx.load_cert_chain(certfile=certfile, keyfile=keyfile)
