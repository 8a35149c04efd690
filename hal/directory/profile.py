"""The session profile: everything the MFP needs to serve one organization, as the cloud sends it.

This is the wire contract between `cloud/` (which stores and serves it) and the firmware (which
holds it in memory for one session). `SessionProfile.from_wire` validates strictly: unknown keys,
missing keys, wrong types and out-of-range values are `ProfileError`s. Secrets are `Secret`s:
mutable bytes that can be wiped, never printed.

Wire format (JSON object):

    {"org_id": "acme", "ttl_s": 300,
     "vpn": {"gateway": "10.78.0.11", "port": 500, "local_id": "mfp-1.space-1", "remote_id": "gw.acme",
             "auth": "psk" | "pubkey" | "eap-mschapv2" | "device",  # device: the device's own certificate
             "psk": "...",                                   # auth == psk
             "client_cert_pem": "...", "client_key_pem": "...",  # auth == pubkey
             "eap_identity": "...", "eap_secret": "...",     # auth == eap-mschapv2
             "ca_cert_pem": "..." | null,                    # verifies the gateway (pubkey/eap/device)
             "ike_proposals": ["aes256gcm16-prfsha384-ecp384"], "esp_proposals": ["aes256gcm16"],
             "remote_ts": ["10.20.0.0/24"], "dpd_delay_s": 1},
     "auth": {"kind": "radius", "host": "10.20.0.50", "port": 1812, "secret": "...",
              "user_format": "{user}@{org}", "timeout_s": 3.0, "retries": 2,
              "require_message_authenticator": false}   # optional: true when the server signs replies
           | {"kind": "radsec", "host": "10.20.0.50", "port": 2083, "ca_pem": "...",   # port: optional (2083)
              "server_name": "radius.acme",                  # optional: else host is checked as an IP SAN
              "user_format": "{user}@{org}", "timeout_s": 3.0, "retries": 2}
           | {"kind": "ldap", "host": "...", "port": 389, "base_dn": "...", "bind_dn": "...",
              "bind_password": "...", "user_attr": "uid", "timeout_s": 3,
              "card_attr": "...",                            # optional: where a person's card ids are
              "ca_pem": "..."},                              # StartTLS: verifies the server
           | {"kind": "ldap", ..., "bind": "device", ...}   # no bind_dn, no bind_password (see below)
     "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": false,
                "end_after_print": false},                   # optional (false)
     "print": {"desk_keys": ["<base64 of a raw 32-byte Ed25519 public key>", ...],   # optional
               "outcomes_url": "http://10.20.0.1:8631/v1/outcomes"}}              # optional

`vpn.remote_ts`: the org's networks the MFP may reach (and take jobs from). None may be a default
route (0.0.0.0/0, ::/0) nor wider than /8 (IPv4) or /32 (IPv6: the largest block an RIR allocates
to one organization; an end site gets a /48): a profile that says "the whole Internet" or a
continent-sized block is not one organization's LAN, and the firmware would route and accept jobs
from all of it through the tunnel.

`print.desk_keys` (1-8, for rotation): the public keys of the org's desk signing keys
(hal/printer/job_proof.py); a job is the user's only with a proof that verifies under one of them.
Parsed as `SessionProfile.desk_keys` (raw 32-byte keys). Absent (profiles registered before it
existed) means an empty tuple: then no job of this org can be proven, and none may print.

`auth.kind == "radsec"`: RADIUS over TLS (RFC 6614, hal/auth/radsec.py). The device presents its
own certificate as the TLS client certificate, so the profile carries no secret at all: `ca_pem`
verifies the org's server, whose certificate must name `server_name` (a DNS name) or, without it,
`host` (an IP SAN). A `secret` key is refused (unknown key) like any other.

`auth.kind == "ldap"` binds as a service account (`bind_dn`, `bind_password`: a simple bind inside
StartTLS), or, with `"bind": "device"`, with the device's own certificate (issue 18): the device
shows it as the TLS client certificate of the StartTLS and binds with SASL EXTERNAL, and the org's
directory maps the certificate's subject to an identity with the service account's rights
(org/ldap_config.py). Such a profile carries no secret: a `bind_dn` or a `bind_password` beside
`"bind": "device"` is an error. Absent `bind` (profiles before it) is `"password"`, the service account.

`print.outcomes_url`: where the MFP tells the org's desks, through the tunnel, what became of the
jobs they delivered (released, deleted by their owner, expired): the org's gateway agent
(org/gateway_agent.py). An http URL whose host is an address literal inside `vpn.remote_ts`, so it
is only ever reached through the tunnel. Absent: nothing is reported, and a desk delivers again
what it cannot know was released.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any


class ProfileError(ValueError):
    """The profile is malformed. The message names the field, never a secret's value."""


class Secret:
    """Secret bytes held in a bytearray so they can be overwritten. Never shown by repr/str."""

    __slots__ = ("_buf",)

    def __init__(self, value: str | bytes | bytearray):
        self._buf = bytearray(value.encode() if isinstance(value, str) else value)

    def reveal(self) -> bytes:
        """The bytes, for the one call that needs them (VICI, RADIUS). Do not keep the result."""
        return bytes(self._buf)

    def wipe(self) -> None:
        for i in range(len(self._buf)):
            self._buf[i] = 0
        self._buf = bytearray()

    @property
    def wiped(self) -> bool:
        return not self._buf

    def __len__(self) -> int:
        return len(self._buf)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self._buf == other._buf

    def __hash__(self) -> int:  # secrets are not dict keys
        raise TypeError("Secret is unhashable")


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_IKE_ID = re.compile(r"^[A-Za-z0-9@._=,:/+ -]{1,255}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_PROPOSAL = re.compile(r"^[a-z0-9_-]{1,120}$")


class _Reader:
    """Takes keys out of one JSON object; complains about what is missing, wrong or left over."""

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, dict):
            raise ProfileError(f"{where}: expected an object")
        self.obj, self.where, self.seen = obj, where, set()

    def get(self, key: str, kind: type | tuple, *, optional: bool = False, default: Any = None) -> Any:
        self.seen.add(key)
        if key not in self.obj or (optional and self.obj[key] is None):
            if optional:
                return default
            raise ProfileError(f"{self.where}.{key}: missing")
        value = self.obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ProfileError(f"{self.where}.{key}: wrong type")
        if not isinstance(value, kinds):
            raise ProfileError(f"{self.where}.{key}: wrong type")
        return value

    def text(self, key: str, pattern: re.Pattern | None = None, *, optional: bool = False, max_len: int = 16384) -> str | None:
        value = self.get(key, str, optional=optional)
        if value is None:
            return None
        if len(value) > max_len or (pattern is not None and not pattern.match(value)):
            raise ProfileError(f"{self.where}.{key}: invalid value")
        return value

    def secret(self, key: str, *, optional: bool = False) -> Secret | None:
        value = self.get(key, str, optional=optional)
        if value is None:
            return None
        if not value or len(value) > 16384:
            raise ProfileError(f"{self.where}.{key}: invalid length")
        return Secret(value)

    def number(self, key: str, lo: float, hi: float, *, integer: bool = True, optional: bool = False, default: Any = None):
        value = self.get(key, int if integer else (int, float), optional=optional, default=default)
        if value is None:
            return None
        if not lo <= value <= hi:
            raise ProfileError(f"{self.where}.{key}: out of range [{lo}, {hi}]")
        return value

    def done(self) -> None:
        extra = set(self.obj) - self.seen
        if extra:
            raise ProfileError(f"{self.where}: unknown keys {sorted(extra)}")


@dataclass
class VpnProfile:
    gateway: str
    port: int
    local_id: str
    remote_id: str
    auth: str
    remote_ts: list[str]
    ike_proposals: list[str]
    esp_proposals: list[str]
    dpd_delay_s: int
    psk: Secret | None = None
    client_cert_pem: str | None = None
    client_key_pem: Secret | None = None
    eap_identity: str | None = None
    eap_secret: Secret | None = None
    ca_cert_pem: str | None = None

    def secrets(self) -> list[Secret]:
        return [s for s in (self.psk, self.client_key_pem, self.eap_secret) if s is not None]


@dataclass
class AuthServerProfile:
    kind: str
    host: str
    port: int
    timeout_s: float
    secret: Secret | None = None  # radius
    user_format: str = "{user}@{org}"  # radius
    retries: int = 2  # radius
    # radius: the org's server signs its replies, so a reply without a Message-Authenticator is
    # not one of its answers (BlastRADIUS, CVE-2024-3596)
    require_message_authenticator: bool = False
    base_dn: str | None = None  # ldap
    # ldap: how the MFP binds: "password" (the service account, bind_dn + bind_password) or
    # "device" (SASL EXTERNAL with the device certificate as TLS client certificate; no secret)
    bind: str = "password"
    bind_dn: str | None = None  # ldap, bind "password"
    bind_password: Secret | None = None  # ldap, bind "password"
    user_attr: str = "uid"  # ldap
    # ldap: the attribute holding a person's cards known by their UID (`card-<uid>`), "" for none
    card_attr: str = ""
    ca_pem: str | None = None  # ldap, radsec: the CA of the server's certificate (required)
    # radsec: the name the server's certificate must carry (DNS SAN); None: `host` as an IP SAN
    server_name: str | None = None

    def secrets(self) -> list[Secret]:
        return [s for s in (self.secret, self.bind_password) if s is not None]


@dataclass
class SessionPolicy:
    idle_timeout_s: int = 300
    max_hold_s: int = 3600
    combined_mode: bool = False
    end_after_print: bool = False  # the patent's step 140: the session ends once its last job printed


@dataclass
class SessionProfile:
    org_id: str
    ttl_s: int
    vpn: VpnProfile
    auth: AuthServerProfile
    policy: SessionPolicy = field(default_factory=SessionPolicy)
    desk_keys: tuple[bytes, ...] = ()  # raw Ed25519 public keys of the org's desks (job owner proofs)
    outcomes_url: str | None = None  # the org's gateway agent, told what became of delivered jobs

    def secrets(self) -> list[Secret]:
        return self.vpn.secrets() + self.auth.secrets()

    def wipe(self) -> None:
        """Overwrite every secret in place (purge)."""
        for s in self.secrets():
            s.wipe()

    @classmethod
    def from_wire(cls, obj: Any) -> "SessionProfile":
        top = _Reader(obj, "profile")
        org_id = top.text("org_id", _ID)
        ttl = top.number("ttl_s", 0, 86400)
        vpn = _vpn(top.get("vpn", dict))
        auth = _auth(top.get("auth", dict))
        pol = _Reader(top.get("policy", dict), "policy")
        policy = SessionPolicy(
            idle_timeout_s=pol.number("idle_timeout_s", 10, 86400),
            max_hold_s=pol.number("max_hold_s", 10, 7 * 86400),
            combined_mode=pol.get("combined_mode", bool),
            end_after_print=pol.get("end_after_print", bool, optional=True, default=False),
        )
        pol.done()
        desk_keys, outcomes_url = _print_section(top.get("print", dict, optional=True), vpn.remote_ts)
        top.done()
        return cls(org_id=org_id, ttl_s=ttl, vpn=vpn, auth=auth, policy=policy, desk_keys=desk_keys,
                   outcomes_url=outcomes_url)

    def to_wire(self) -> dict:
        """The wire form (reveals secrets: for the cloud's responses and tests only)."""
        def plain(v):
            return v.reveal().decode() if isinstance(v, Secret) else v
        vpn = {k: plain(v) for k, v in self.vpn.__dict__.items()
               if v is not None or k == "ca_cert_pem"}
        if self.auth.kind == "radius":
            keys = ("kind", "host", "port", "secret", "user_format", "timeout_s", "retries",
                    *(("require_message_authenticator",) if self.auth.require_message_authenticator else ()))
        elif self.auth.kind == "radsec":
            keys = ("kind", "host", "port", "ca_pem", "user_format", "timeout_s", "retries",
                    *(("server_name",) if self.auth.server_name else ()))
        else:
            binding = ("bind",) if self.auth.bind == "device" else ("bind_dn", "bind_password")
            keys = ("kind", "host", "port", "base_dn", *binding, "user_attr", "timeout_s", "ca_pem",
                    *(("card_attr",) if self.auth.card_attr else ()))
        auth = {k: plain(getattr(self.auth, k)) for k in keys}
        wire = {"org_id": self.org_id, "ttl_s": self.ttl_s, "vpn": vpn, "auth": auth,
                "policy": {k: v for k, v in self.policy.__dict__.items()
                           if k != "end_after_print" or v}}  # absent means false
        if self.desk_keys:
            wire["print"] = {"desk_keys": [base64.b64encode(k).decode() for k in self.desk_keys]}
        if self.outcomes_url:
            wire.setdefault("print", {})["outcomes_url"] = self.outcomes_url
        return wire


def _list(r: _Reader, key: str, check) -> list[str]:
    items = r.get(key, list)
    if not 1 <= len(items) <= 16 or not all(isinstance(i, str) for i in items):
        raise ProfileError(f"{r.where}.{key}: expected 1-16 strings")
    for i in items:
        check(i, f"{r.where}.{key}")
    return list(items)


def _cidr(value: str, where: str) -> None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ProfileError(f"{where}: {value!r} is not a network") from None


RADSEC_PORT = 2083  # RFC 6614's port for RADIUS over TLS

# The widest selector one organization's LAN may be (see the module docstring).
MIN_PREFIX = {4: 8, 6: 32}


def _remote_ts(value: str, where: str) -> None:
    _cidr(value, where)
    net = ipaddress.ip_network(value)
    if net.prefixlen == 0:
        raise ProfileError(f"{where}: {value} is a default route, not an organization's network")
    if net.prefixlen < MIN_PREFIX[net.version]:
        raise ProfileError(f"{where}: {value} is wider than /{MIN_PREFIX[net.version]}")


def _print_section(obj: Any, remote_ts) -> tuple[tuple[bytes, ...], str | None]:
    if obj is None:
        return (), None
    r = _Reader(obj, "print")
    keys = _desk_keys(r) if "desk_keys" in obj else ()
    url = _outcomes_url(r.get("outcomes_url", str), remote_ts) if "outcomes_url" in obj else None
    r.done()
    return keys, url


def _outcomes_url(url: str, remote_ts) -> str:
    from urllib.parse import urlsplit

    where = "print.outcomes_url"
    try:
        parts = urlsplit(url)
        host = ipaddress.ip_address(parts.hostname or "")
        port = parts.port
    except ValueError:
        raise ProfileError(f"{where}: expected http://<address>:<port>/<path>") from None
    if len(url) > 200 or parts.scheme != "http" or not port or not parts.path.startswith("/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise ProfileError(f"{where}: expected http://<address>:<port>/<path>")
    if not any(host.version == n.version and host in n for n in map(ipaddress.ip_network, remote_ts)):
        raise ProfileError(f"{where}: {host} is not inside vpn.remote_ts (it is reached through the tunnel only)")
    return url


def _desk_keys(r: "_Reader") -> tuple[bytes, ...]:
    items = r.get("desk_keys", list)
    if not 1 <= len(items) <= 8 or not all(isinstance(i, str) for i in items):
        raise ProfileError("print.desk_keys: expected 1-8 strings")
    keys = []
    for item in items:
        try:
            raw = base64.b64decode(item, validate=True) if len(item) <= 64 else b""
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32 or base64.b64encode(raw).decode() != item:
            raise ProfileError("print.desk_keys: expected base64 of a raw 32-byte Ed25519 public key")
        if raw in keys:
            raise ProfileError("print.desk_keys: a key is listed twice")
        keys.append(raw)
    return tuple(keys)


def _proposal(value: str, where: str) -> None:
    if not _PROPOSAL.match(value):
        raise ProfileError(f"{where}: invalid proposal")


def _pem(r: _Reader, key: str, kind: str, *, optional: bool) -> str | None:
    value = r.text(key, optional=optional, max_len=16384)
    if value is not None and f"-----BEGIN {kind}" not in value:
        raise ProfileError(f"{r.where}.{key}: not a PEM {kind.lower()}")
    return value


def _gateway(r: _Reader) -> str:
    """An IP address literal, not a name: the device firewall admits IKE/ESP from exactly this
    address, and a device that resolved names would let whoever answers its DNS choose it."""
    value = r.text("gateway", _HOST)
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ProfileError("vpn.gateway: must be an IP address") from None
    if addr.is_loopback or addr.is_multicast or addr.is_unspecified or addr.is_link_local:
        raise ProfileError("vpn.gateway: not a usable address")
    return str(addr)


# "device": the MFP authenticates with its own certificate from the space's device CA (issue 18);
# the profile then holds no secret at all (`ca_cert_pem` verifies the gateway)
VPN_AUTHS = ("psk", "pubkey", "eap-mschapv2", "device")


def _vpn(obj: Any) -> VpnProfile:
    r = _Reader(obj, "vpn")
    auth = r.text("auth")
    if auth not in VPN_AUTHS:
        raise ProfileError(f"vpn.auth: must be {', '.join(VPN_AUTHS)}")
    vpn = VpnProfile(
        gateway=_gateway(r),
        port=r.number("port", 1, 65535),
        local_id=r.text("local_id", _IKE_ID),
        remote_id=r.text("remote_id", _IKE_ID),
        auth=auth,
        remote_ts=_list(r, "remote_ts", _remote_ts),
        ike_proposals=_list(r, "ike_proposals", _proposal),
        esp_proposals=_list(r, "esp_proposals", _proposal),
        dpd_delay_s=r.number("dpd_delay_s", 1, 300),
        psk=r.secret("psk", optional=auth != "psk"),
        client_cert_pem=_pem(r, "client_cert_pem", "CERTIFICATE", optional=auth != "pubkey"),
        client_key_pem=r.secret("client_key_pem", optional=auth != "pubkey"),
        eap_identity=r.text("eap_identity", _IKE_ID, optional=auth != "eap-mschapv2"),
        eap_secret=r.secret("eap_secret", optional=auth != "eap-mschapv2"),
        ca_cert_pem=_pem(r, "ca_cert_pem", "CERTIFICATE", optional=True),
    )
    r.done()
    if auth != "psk" and vpn.ca_cert_pem is None:
        raise ProfileError("vpn.ca_cert_pem: required to verify the gateway")
    return vpn


# how an LDAP profile binds: the service account's password, or the device's certificate (issue 18)
LDAP_BINDS = ("password", "device")


def _auth(obj: Any) -> AuthServerProfile:
    r = _Reader(obj, "auth")
    kind = r.text("kind")
    if kind == "radius":
        a = AuthServerProfile(
            kind=kind, host=r.text("host", _HOST), port=r.number("port", 1, 65535),
            secret=r.secret("secret"), user_format=r.text("user_format", max_len=128),
            timeout_s=r.number("timeout_s", 0.1, 60, integer=False),
            retries=r.number("retries", 1, 10),
            require_message_authenticator=r.get("require_message_authenticator", bool, optional=True, default=False),
        )
        _user_format(a.user_format)
    elif kind == "radsec":
        # no secret: the device's certificate is the client's credential (RFC 6614's "radsec" is public)
        a = AuthServerProfile(
            kind=kind, host=r.text("host", _HOST),
            port=r.number("port", 1, 65535, optional=True, default=RADSEC_PORT),
            ca_pem=_pem(r, "ca_pem", "CERTIFICATE", optional=False),
            server_name=r.text("server_name", _HOST, optional=True),
            user_format=r.text("user_format", max_len=128),
            timeout_s=r.number("timeout_s", 0.1, 60, integer=False),
            retries=r.number("retries", 1, 10),
        )
        _user_format(a.user_format)
    elif kind == "ldap":
        bind = r.text("bind", optional=True) or "password"
        if bind not in LDAP_BINDS:
            raise ProfileError(f"auth.bind: must be {' or '.join(LDAP_BINDS)}")
        device = bind == "device"
        for key in ("bind_dn", "bind_password"):
            if device and key in r.obj:
                raise ProfileError(f"auth.{key}: not with bind \"device\" (the device certificate is the credential)")
        a = AuthServerProfile(
            kind=kind, host=r.text("host", _HOST), port=r.number("port", 1, 65535),
            base_dn=r.text("base_dn", max_len=1024), bind=bind,
            bind_dn=None if device else r.text("bind_dn", max_len=1024),
            bind_password=None if device else r.secret("bind_password"), user_attr=r.text("user_attr", _ID),
            card_attr=r.text("card_attr", _ID, optional=True) or "",
            timeout_s=r.number("timeout_s", 1, 60),
            # no plain LDAP: the bind password and PINs would cross charon's memory in the clear
            ca_pem=_pem(r, "ca_pem", "CERTIFICATE", optional=False),
        )
    else:
        raise ProfileError("auth.kind: must be radius, radsec or ldap")
    r.done()
    return a


def _user_format(value: str) -> None:
    if "{user}" not in value:
        raise ProfileError("auth.user_format: must contain {user}")
    try:
        value.format(user="u", org="o")
    except (KeyError, IndexError, ValueError):
        raise ProfileError("auth.user_format: only {user} and {org} may be used") from None
