"""RADIUS authenticator (pyrad, blocking: call it from a thread).

One Access-Request per `authenticate` call, with:
- `User-Name` from the profile's `user_format` (`{user}@{org}` by default; the server checks the
  realm), `NAS-Identifier`, and `User-Password` (the PIN, hidden with the shared secret as
  RFC 2865 5.2 says) and `State` when answering a challenge;
- `TP-Card-SUN` (vendor-specific, see the `dictionary`), the tap's card proof when there is one:
  the org's server checks it (org/radius_config.py); the MFP only forwards it;
- always a Message-Authenticator (BlastRADIUS, CVE-2024-3596). Replies are only taken when their
  Response Authenticator (and Message-Authenticator, if present) verifies against our request and
  secret: pyrad drops anything else and keeps waiting, so a forged or mis-keyed reply ends as
  `Unavailable`, never as an answer. Replies without a Message-Authenticator are accepted because
  Debian 12's FreeRADIUS does not sign them (FIELD-NOTES), unless the org's profile says its server
  does (`auth.require_message_authenticator`): then an unsigned reply is `Unavailable`.

Timing: each send waits `max(profile.timeout_s, MIN_TIMEOUT_S)`; FreeRADIUS delays every reject
by 1 s, so a shorter wait would turn rejects into "unavailable". The request is sent
`profile.retries` times in total (pyrad's `retries` counts sends), so the call blocks at most
`deadline_s = timeout * retries` (plus scheduling noise).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib import resources

from pyrad import packet
from pyrad.client import Client, Timeout
from pyrad.dictionary import Dictionary

from hal.auth import (
    USER_ID, Accepted, AuthConfigError, Authenticator, AuthOutcome, BadInput, PinRequired, Rejected,
    Unavailable, check_input,
)
from hal.directory.profile import AuthServerProfile, Secret

log = logging.getLogger(__name__)

REJECT_DELAY_S = 1.0  # FreeRADIUS's default security.reject_delay
MIN_TIMEOUT_S = 1.5  # per send: above the reject delay, with room for a slow tunnel
MAX_NAME = 253  # an attribute's value is at most 253 octets


@lru_cache(maxsize=1)
def dictionary() -> Dictionary:
    """The small RADIUS dictionary shipped with this package."""
    ref = resources.files("hal.auth").joinpath("dictionary")
    with resources.as_file(ref) as path:
        return Dictionary(str(path))


class RadiusExchange(Authenticator):
    """What RADIUS over UDP and over TLS share: the deadline, the input checks, the user name from
    the profile's `user_format`, the log line. Subclasses do one `_exchange`."""

    _auth: AuthServerProfile
    _timeout: float
    _label = "radius"

    @property
    def timeout_s(self) -> float:
        return self._timeout

    @property
    def deadline_s(self) -> float:
        return self._timeout * self._auth.retries

    def authenticate(self, user_id: str, org_id: str, pin: Secret | str | None = None,
                     state: bytes | None = None, proof: str | None = None) -> AuthOutcome:
        bad = check_input(user_id, org_id, pin, state, proof)
        if bad is not None:
            return bad
        name = self._auth.user_format.format(user=user_id, org=org_id)
        if len(name.encode()) > MAX_NAME:
            return BadInput("user name too long for RADIUS")
        outcome = self._exchange(user_id, name, pin, state, proof or None)
        log.info("%s %s: %s", self._label, type(outcome).__name__, user_id,
                 extra={"org_id": org_id, "auth_outcome": type(outcome).__name__})
        return outcome

    def _exchange(self, user_id: str, name: str, pin, state, proof) -> AuthOutcome:
        raise NotImplementedError


class RadiusAuthenticator(RadiusExchange):
    def __init__(self, auth: AuthServerProfile, *, nas_identifier: str = "tenantprint",
                 min_timeout_s: float = MIN_TIMEOUT_S):
        if auth.kind != "radius":
            raise AuthConfigError(f"not a radius profile (kind {auth.kind!r})")
        if auth.secret is None or auth.secret.wiped:
            raise AuthConfigError("radius profile has no shared secret")
        if not 1 <= auth.retries <= 10:
            raise AuthConfigError("radius retries must be 1-10")
        self._auth = auth
        self._nas_identifier = nas_identifier
        self._timeout = max(float(auth.timeout_s), min_timeout_s)
        self._dict = dictionary()

    def _exchange(self, user_id: str, name: str, pin, state, proof) -> AuthOutcome:
        secret = self._auth.secret
        if secret is None or secret.wiped:
            return Unavailable("the session's auth credentials were purged")
        client = Client(server=self._auth.host, authport=self._auth.port, secret=secret.reveal(),
                        dict=self._dict, retries=self._auth.retries, timeout=self._timeout)
        try:
            req = client.CreateAuthPacket(code=packet.AccessRequest, message_authenticator=True)
            fill_request(req, name, self._nas_identifier, pin, state, proof)
            reply = client.SendPacket(req)
        except Timeout:
            return Unavailable(f"no verified reply from {self._where()} after "
                               f"{self._auth.retries} tries of {self._timeout:g} s")
        except OSError as exc:
            return Unavailable(f"cannot reach {self._where()}: {exc.strerror or type(exc).__name__}")
        except (packet.PacketError, ValueError, KeyError, TypeError) as exc:
            # pyrad's messages name attributes and lengths, never values; still, keep only the type
            return Unavailable(f"cannot build or read the RADIUS exchange ({type(exc).__name__})")
        finally:
            client.secret = b""
            client._CloseSocket()
        if self._auth.require_message_authenticator and 80 not in reply:  # 80: Message-Authenticator
            # pyrad verified the Response Authenticator (and a Message-Authenticator when present);
            # an org whose server signs every reply takes nothing unsigned (BlastRADIUS)
            return Unavailable(f"{self._where()} answered without a Message-Authenticator, which this org requires")
        return map_reply(user_id, reply.code, _reply_message(reply), _state(reply), _user_name(reply))

    def _where(self) -> str:
        return f"RADIUS server {self._auth.host}:{self._auth.port}"


def fill_request(req: packet.AuthPacket, name: str, nas_identifier: str, pin: Secret | str | None,
                 state: bytes | None, proof: str | None) -> None:
    """An Access-Request's attributes (UDP and RadSec alike): the user name, the NAS, the PIN hidden
    with the request's secret (its bytes wiped after), the challenge's State, the card proof."""
    req["User-Name"] = name
    req["NAS-Identifier"] = nas_identifier
    if pin is not None:
        raw = bytearray(pin.reveal() if isinstance(pin, Secret) else pin.encode())
        try:
            req["User-Password"] = req.PwCrypt(bytes(raw))
        finally:
            raw[:] = b"\0" * len(raw)
    if state is not None:
        req["State"] = bytes(state)
    if proof is not None:
        req["TP-Card-SUN"] = proof


def map_reply(user_id: str, code: int, message: str | None, state: bytes | None,
              named: str | None = None) -> AuthOutcome:
    """A verified reply as an outcome. Only Access-Accept is yes; anything unexpected is not. For a
    card known by its UID (`card-<uid>`), the accept's User-Name (realm cut off) says whose card it
    is (`as_user`; none, or not a valid user id: no owner, which the firmware refuses). For anyone
    else a User-Name in the reply is ignored (servers echo it, in their own formats)."""
    if code == packet.AccessAccept:
        if not user_id.startswith("card-"):
            return Accepted(user_id)
        if named and USER_ID.fullmatch(named) and not named.startswith("card-"):
            return Accepted(user_id, named)
        return Accepted(user_id)
    if code == packet.AccessReject:
        return Rejected(user_id, message or "Access denied")
    if code == packet.AccessChallenge:
        if not state:
            return Unavailable("the server sent a challenge without State")
        return PinRequired(user_id, state, message or "Enter PIN")
    return Unavailable(f"unexpected RADIUS reply code {code}")


def _reply_message(reply) -> str | None:
    try:
        parts = reply.get("Reply-Message") or []
    except (KeyError, UnicodeDecodeError):
        return None
    text = "".join(p if isinstance(p, str) else p.decode("utf-8", "replace") for p in parts)
    # it goes to a small panel and the journal: printable, one line, bounded
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text[:200] or None


def _user_name(reply) -> str | None:
    """The User-Name of a reply (the server saying whose the request's name is), realm cut off."""
    try:
        values = reply.get("User-Name") or []
    except (KeyError, UnicodeDecodeError):
        return None
    if not values:
        return None
    name = values[0] if isinstance(values[0], str) else bytes(values[0]).decode("utf-8", "replace")
    return name.split("@", 1)[0]


def _state(reply) -> bytes | None:
    try:
        values = reply.get("State") or []
    except KeyError:
        return None
    return bytes(values[0]) if values else None

