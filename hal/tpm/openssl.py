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
too (200 SHA-256 took 417 ms instead of 0.2 ms), and its EC key management has no TLS groups, so a
P-256-only server (FreeRADIUS's default `ecdh_curve`) finds no key share ("no suitable key share",
with `openssl s_client -provider tpm2 -provider default` too). Preferring `tpm2` (`?provider=tpm2`,
a preference, not a requirement) for a whole handshake makes the ephemeral P-256 key in the TPM,
which fails ("EC lib"); preferring it after the ClientHello makes the TPM derive the shared secret
with a key it does not hold (ECDH_ZGen: TPM_RC_VALUE). What works (`handshakes()`): `tpm2` preferred
while the key is loaded, and in a handshake only around our CertificateVerify: from the message
before it (TLS 1.3, which the server's EncryptedExtensions tell: our Certificate; TLS 1.2: our
ClientKeyExchange, written after the key exchange) to the CertificateVerify itself, found with
CPython's message callback (`SSLContext._msg_callback`, a private hook of Python 3.8+, set when the
key loads: OpenSSL copies a context's callback into each connection it makes). Measured against
FreeRADIUS 3.2.1 (P-256 only) and `openssl s_server` (X25519 and P-256, TLS 1.3 and 1.2): a RadSec
handshake with the TPM key 8-15 ms, with a file key ~3 ms.

The preference is process-wide while it holds (a lock makes handshakes take turns; the lock is held
for a whole handshake, network waits included): another thread fetching an algorithm meanwhile
gets the TPM's implementation, which computes the same result, slower. Nothing else in the firmware's processes uses the system libcrypto for bulk work
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
        os.environ.update(config.env())  # the TCTI (and its bus) are read by the provider as it loads
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
    blob decoded by the `tpm2` provider, the context's message callback set (OpenSSL copies it into
    each connection when it is made). Shake hands on such a context inside `handshakes()`."""
    load_provider(config)
    with tpm_preferred():
        ctx.load_cert_chain(certfile=certfile, keyfile=keyfile)
    ctx._msg_callback = _watch


_shaking = threading.local()  # set while this thread is inside `handshakes()`


def _set_preference(on: bool) -> None:
    if _crypto().EVP_set_default_properties(None, b"?provider=tpm2" if on else b"") != 1:
        _crypto().ERR_clear_error()


def _watch(conn, direction, version, content_type, msg_type, data) -> None:
    """CPython's message callback: inside `handshakes()`, prefer `tpm2` for our CertificateVerify
    only, from the message before it to it. TLS 1.3 (the server's EncryptedExtensions told it):
    from our Certificate (every key exchange and the server's Finished are done by then); TLS 1.2:
    from our ClientKeyExchange (our Certificate comes before the key exchange there)."""
    from ssl import _TLSMessageType as Msg  # (CPython's own names of the handshake messages)

    if not getattr(_shaking, "on", False):
        return
    if direction == "read" and msg_type == Msg.ENCRYPTED_EXTENSIONS:
        _shaking.tls13 = True
    elif direction == "write" and (msg_type == Msg.CLIENT_KEY_EXCHANGE
                                   or (msg_type == Msg.CERTIFICATE and getattr(_shaking, "tls13", False))):
        _set_preference(True)
    elif direction == "write" and msg_type == Msg.CERTIFICATE_VERIFY:
        _set_preference(False)


@contextlib.contextmanager
def handshakes():
    """While inside, TLS handshakes in this thread on contexts `load_key_into` prepared sign in the
    TPM: `tpm2` preferred from the point where every key exchange is done and our CertificateVerify
    comes next, to the end of the block (see the module docstring). Holders take turns."""
    with _lock:
        _shaking.on, _shaking.tls13 = True, False
        try:
            yield
        finally:
            _shaking.on = False
            _set_preference(False)
