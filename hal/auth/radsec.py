"""RADIUS over TLS (RadSec, RFC 6614) authenticator (blocking: call it from a thread).

The same contract and the same Access-Request as hal/auth/radius.py (User-Name from the profile's
`user_format`, NAS-Identifier, the PIN in User-Password, State when answering a challenge, the tap's
card proof as `TP-Card-SUN`, always a Message-Authenticator), and the same reply mapping
(`map_reply`), but carried in a TLS connection instead of UDP:

- the server is verified against the profile's `ca_pem`, and its certificate must name the
  profile's `server_name` (a DNS SAN) or, without one, its `host` (an IP SAN);
- the device proves itself with its own certificate and key (`client_cert`, `client_key`: files of
  the device, never of the org), so the profile holds no secret: RFC 6614 2.3 fixes the RADIUS
  shared secret to the public string "radsec", and TLS protects the exchange (the PIN is still
  hidden in User-Password as RFC 2865 5.2 says, with that public secret: TLS is what protects it);
- TLS 1.2 or 1.3 only.

The device's key may live in a TPM 2.0 (`hal.tpm`): `client_key` is then its reference file, and
OpenSSL's `tpm2` provider signs inside the TPM (`hal.tpm.openssl`: the provider is preferred while
the key loads and in a handshake from the point where its key exchange is done: see that module).

One TLS connection per session: opened ahead by `warm()` (after the tunnel is up) and kept between
exchanges; a kept connection the server closed is opened again before anything is sent. The
device's files are read when a connection is opened (a TPM key: loading it takes the TPM ~3 ms, so
not at every exchange), so a certificate renewed during a session is shown on the next one.

Timing: each try (connect, handshake, request, reply) has `max(profile.timeout_s, MIN_TIMEOUT_S)`
(FreeRADIUS delays every reject by 1 s). A try is repeated, up to `profile.retries` tries in all,
only when the request never reached the server (no connection, the handshake timed out): once it
was written, a lost reply ends as `Unavailable` (sent again on a new connection, a card proof would
be refused as a replay). So the call blocks at most `deadline_s = timeout * retries`.

Every failure is an outcome, never an exception: a server certificate that does not verify, a TLS
alert (the server refusing this device's certificate), a timeout, a closed connection, a reply that
does not verify against the request are all `Unavailable`, with a reason naming the server and the
kind of failure, never a secret or a PIN.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time

from pyrad import packet

from hal.auth import AuthConfigError, AuthOutcome, Unavailable
from hal.auth.radius import (
    MIN_TIMEOUT_S,
    RadiusExchange,
    fill_request,
    _reply_message,
    _state,
    _user_name,
    dictionary,
    map_reply,
)
from hal.directory.profile import AuthServerProfile, Secret
from hal.tpm import TpmError

log = logging.getLogger(__name__)

RADSEC_SECRET = b"radsec"  # RFC 6614 2.3: the shared secret of every RADIUS/TLS exchange
HEADER = struct.Struct("!BBH")  # code, identifier, length
MIN_PACKET, MAX_PACKET = 20, 4096  # RFC 2865 3


class _NotSent(Exception):
    """The request did not reach the server (no connection, no handshake): it may be tried again."""


class _Failed(Exception):
    """The try failed for good; the message is the `Unavailable` reason (no secret in it)."""


def load_device_identity(ctx: ssl.SSLContext, client_cert: str, client_key: str) -> None:
    """Make `ctx` present the device's certificate, signing with its key. The one place that
    touches the device key: a key file, or a TPM key reference (`hal.tpm`), loaded through
    OpenSSL's `tpm2` provider; such a context is marked (`uses_tpm`): run its handshakes inside
    `handshake_scope(ctx)`. A TPM that cannot be reached: `ValueError`."""
    from hal.tpm import TpmKeyError, read_ref

    try:
        ref = read_ref(client_key)
    except TpmKeyError as exc:
        raise ValueError(str(exc)) from None
    if ref is None:
        ctx.load_cert_chain(certfile=client_cert, keyfile=client_key)
        return
    from hal.tpm.openssl import load_key_into

    try:
        load_key_into(ctx, client_cert, client_key, ref.config)
    except TpmError as exc:
        raise ValueError(f"the device key in the TPM: {exc}") from None
    ctx.uses_tpm = True


def handshake_scope(ctx: ssl.SSLContext):
    """What a TLS handshake on `ctx` runs inside: for a context whose key is in the TPM
    (`uses_tpm`), `hal.tpm.openssl.handshakes()` (the TPM signs our CertificateVerify); else nothing."""
    if getattr(ctx, "uses_tpm", False):
        from hal.tpm.openssl import handshakes

        return handshakes()
    return contextlib.nullcontext()


def client_context(ca_pem: str, client_cert: str, client_key: str) -> ssl.SSLContext:
    """A TLS 1.2/1.3 client context that verifies the server against `ca_pem` (with its name:
    `check_hostname`) and presents the device's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # the name must be a SAN: a certificate with only an IP SAN would otherwise match its CN
    ctx.hostname_checks_common_name = False
    ctx.load_verify_locations(cadata=ca_pem)
    load_device_identity(ctx, client_cert, client_key)
    return ctx


class RadsecAuthenticator(RadiusExchange):
    _label = "radsec"

    def __init__(self, auth: AuthServerProfile, *, client_cert: str | None = None, client_key: str | None = None,
                 nas_identifier: str = "tenantprint", min_timeout_s: float = MIN_TIMEOUT_S):
        if auth.kind != "radsec":
            raise AuthConfigError(f"not a radsec profile (kind {auth.kind!r})")
        if not auth.ca_pem:
            raise AuthConfigError("radsec profile has no CA to verify the server")
        if not 1 <= auth.retries <= 10:
            raise AuthConfigError("radsec retries must be 1-10")
        if not client_cert or not client_key:
            raise AuthConfigError("radsec needs the device's certificate and key files")
        self._auth = auth
        self._cert, self._key = str(client_cert), str(client_key)
        self._nas_identifier = nas_identifier
        self._timeout = max(float(auth.timeout_s), min_timeout_s)
        self._dict = dictionary()
        self._context()  # a CA, certificate or key that cannot be used is a config error, now
        self._kept: ssl.SSLSocket | None = None  # the session's connection, between exchanges
        self._lock = threading.Lock()

    def _context(self) -> ssl.SSLContext:
        try:
            return client_context(self._auth.ca_pem or "", self._cert, self._key)
        except (ssl.SSLError, OSError, ValueError) as exc:
            # names the files (device paths, not secrets) and the kind of failure only
            raise AuthConfigError(f"radsec TLS setup failed ({_why(exc)}): check the CA and "
                                  f"the device's files {self._cert}, {self._key}") from None

    def warm(self) -> None:
        """Open the session's connection ahead (after the tunnel is up, long before a tap): the
        handshake then costs the person at the printer nothing. Failures are only logged: the
        exchange connects itself when there is no usable connection."""
        with self._lock:
            if self._usable_kept() is not None:
                return
            try:
                self._kept = self._connect(self._context(), self._timeout)
            except (_NotSent, _Failed, AuthConfigError) as exc:
                log.info("radsec connection not opened ahead: %s", exc)

    def close(self) -> None:
        with self._lock:
            self._drop_kept()

    def _drop_kept(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            try:
                kept.close()
            except OSError:
                pass

    def _usable_kept(self) -> ssl.SSLSocket | None:
        """The kept connection if the server has not closed it (a TLS 1.3 session ticket may wait
        unread: that is no reason to drop it), else None (and it is dropped)."""
        tls = self._kept
        if tls is None:
            return None
        try:
            readable, _, _ = select.select([tls], [], [], 0)
            if readable or tls.pending():
                tls.setblocking(False)
                try:
                    data = tls.recv(1)
                except ssl.SSLWantReadError:
                    data = None  # only TLS records without data (tickets): alive
                finally:
                    tls.setblocking(True)
                if data is not None:  # the server closed it (b"") or sent what nobody asked for
                    self._drop_kept()
                    return None
        except (OSError, ValueError):
            self._drop_kept()
            return None
        return tls

    def _exchange(self, user_id: str, name: str, pin, state, proof) -> AuthOutcome:
        try:
            req = access_request(self._dict, name, self._nas_identifier, pin, state, proof)
            raw = req.RequestPacket()
        except (packet.PacketError, ValueError, KeyError, TypeError) as exc:
            return Unavailable(f"cannot build the RADIUS request ({type(exc).__name__})")
        made: list[ssl.SSLContext] = []

        def context() -> ssl.SSLContext:  # built for a new connection only (a TPM key: ~3 ms to load)
            if not made:
                made.append(self._context())
            return made[0]

        deadline = time.monotonic() + self.deadline_s
        reason = ""
        with self._lock:
            for _ in range(self._auth.retries):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    answer = self._try(context, raw, min(self._timeout, remaining))
                except AuthConfigError as exc:
                    return Unavailable(str(exc))
                except _NotSent as exc:
                    reason = str(exc)
                    continue
                except _Failed as exc:
                    return Unavailable(str(exc))
                return self._outcome(user_id, req, answer)
        return Unavailable(reason or f"no reply from {self._where()} in {self.deadline_s:g} s")

    def _try(self, context, raw: bytes, budget: float) -> bytes:
        """The request and its reply (raw), on the kept connection or a new one (its context from
        `context()`), which is kept after. Raises _NotSent (nothing reached the server: another
        try is safe), _Failed (it may have: never resent, a card proof would read as a replay) or
        AuthConfigError (no context)."""
        end = time.monotonic() + budget
        tls = self._usable_kept()
        if tls is None:
            tls = self._kept = self._connect(context(), budget)
        try:
            tls.settimeout(_left(end))
            tls.sendall(raw)
        except (OSError, ValueError) as exc:
            self._drop_kept()  # a connection that broke under the write: the request never arrived
            raise _NotSent(f"connection to {self._where()} broke ({type(exc).__name__})") from None
        try:
            return read_packet(tls, end)
        except TimeoutError:
            self._drop_kept()
            raise _Failed(f"no reply from {self._where()} in {budget:g} s") from None
        except ssl.SSLError as exc:
            self._drop_kept()
            # TLS 1.3: the server judges our certificate after our handshake ended, so its
            # refusal (an alert) arrives here
            raise _Failed(f"{self._where()} ended TLS ({_why(exc)}): "
                          "it may not accept this device's certificate") from None
        except (ConnectionError, EOFError) as exc:
            self._drop_kept()
            raise _Failed(f"{self._where()} closed the connection without a reply "
                          f"({type(exc).__name__}): it may not accept this device") from None
        except OSError as exc:
            self._drop_kept()
            raise _Failed(f"connection to {self._where()} failed "
                          f"({exc.strerror or type(exc).__name__})") from None
        except ValueError as exc:
            self._drop_kept()
            raise _Failed(f"{self._where()} sent no RADIUS packet ({exc})") from None

    def _connect(self, ctx: ssl.SSLContext, budget: float) -> ssl.SSLSocket:
        """A TLS connection to the server, handshake done. Raises _NotSent or _Failed."""
        end = time.monotonic() + budget
        hostname = self._auth.server_name or self._auth.host
        try:
            plain = socket.create_connection((self._auth.host, self._auth.port), timeout=budget)
        except TimeoutError:
            raise _NotSent(f"cannot reach {self._where()}: no connection in {budget:g} s") from None
        except OSError as exc:
            raise _NotSent(f"cannot reach {self._where()}: {exc.strerror or type(exc).__name__}") from None
        try:
            try:
                # the request follows the handshake's last flight at once: no Nagle wait for its ACK
                plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # closed with a reset, never left behind: an orphaned socket still sending its FIN
                # into a tunnel that is gone holds the session sandbox's network namespace (its
                # link outlived it: the purge waited 2 s and found leftovers)
                plain.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                plain.settimeout(_left(end))
                with handshake_scope(ctx):
                    tls = ctx.wrap_socket(plain, server_hostname=hostname)
            except ssl.SSLCertVerificationError as exc:
                raise _Failed(f"{self._where()}'s certificate does not verify "
                              f"({exc.verify_message or _why(exc)})") from None
            except TimeoutError:
                raise _NotSent(f"TLS handshake with {self._where()} timed out") from None
            except ssl.SSLError as exc:
                raise _Failed(f"TLS handshake with {self._where()} failed ({_why(exc)})") from None
            except TpmError as exc:
                raise _Failed(f"TLS handshake with {self._where()}: the device key in the TPM ({exc})") from None
            except OSError as exc:
                raise _NotSent(f"TLS handshake with {self._where()} broke off "
                               f"({exc.strerror or type(exc).__name__})") from None
        except BaseException:
            plain.close()
            raise
        return tls

    def _outcome(self, user_id: str, req: packet.AuthPacket, raw: bytes) -> AuthOutcome:
        try:
            reply = req.CreateReply(packet=raw)
            valid = req.VerifyReply(reply, raw)
        except (packet.PacketError, ValueError, KeyError, TypeError) as exc:
            return Unavailable(f"cannot read the reply of {self._where()} ({type(exc).__name__})")
        if not valid:
            # over TLS nobody else can answer: the server is broken or not speaking RFC 6614
            return Unavailable(f"the reply of {self._where()} does not verify against the request")
        return map_reply(user_id, reply.code, _reply_message(reply), _state(reply), _user_name(reply))

    def _where(self) -> str:
        return f"RadSec server {self._auth.host}:{self._auth.port}"


def access_request(dictionary, name: str, nas_identifier: str, pin: Secret | str | None,
                   state: bytes | None, proof: str | None) -> packet.AuthPacket:
    """The Access-Request of one exchange (shared secret "radsec"), with a Message-Authenticator."""
    req = packet.AuthPacket(code=packet.AccessRequest, secret=RADSEC_SECRET, dict=dictionary,
                            message_authenticator=True)
    fill_request(req, name, nas_identifier, pin, state, proof)
    return req


def read_packet(sock, end: float) -> bytes:
    """One RADIUS packet from a stream (RFC 6614 2.4: packets follow each other, each as long as its
    Length field says). Raises EOFError when the stream ends first, ValueError for a bad length,
    TimeoutError past `end` (a `time.monotonic()` instant)."""
    head = _read_exactly(sock, HEADER.size, end)
    _, _, length = HEADER.unpack(head)
    if not MIN_PACKET <= length <= MAX_PACKET:
        raise ValueError(f"a RADIUS packet's length is {MIN_PACKET}-{MAX_PACKET}, not {length}")
    return head + _read_exactly(sock, length - HEADER.size, end)


def _read_exactly(sock, n: int, end: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        sock.settimeout(_left(end))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("stream ended inside a packet" if buf else "stream ended")
        buf += chunk
    return bytes(buf)


def _left(end: float) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _why(exc: BaseException) -> str:
    """An OpenSSL error's reason code (e.g. TLSV1_ALERT_UNKNOWN_CA), else the exception's type."""
    return getattr(exc, "reason", None) or type(exc).__name__
