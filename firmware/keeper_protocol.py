"""The protocol between the daemon and its secret keeper process, typed: one request per operation,
one reply type per outcome. Pure: encoding and decoding only (`firmware/secret_keeper.py` moves the
lines). Nothing here carries an org secret except the `auth` request's PIN, which the daemon splices
in as bytes (`SecretKeeper.authenticate`).

JSON lines; the first line to the keeper is the firmware configuration, then one request, one reply:

    {"op": "fetch", "org": O}          -> ProfileFacts | LookupRefused
    {"op": "tunnel_load", "timeout_s": s, "vici_socket": path, "netns": name, "known_empty": b}
                                        -> TunnelLoaded | TunnelRefused
        (the session's sandbox: its charon's VICI socket, and its network stack, which the keeper
        enters for good before it talks to charon: authentication then goes through the tunnel;
        the session is loaded into charon, nothing is sent to the gateway yet; "known_empty": the
        daemon checked when it built the sandbox that its charon holds nothing)
    {"op": "tunnel_up", "timeout_s": s} -> TunnelFacts | TunnelRefused
        (IKE on what tunnel_load loaded; with "vici_socket" and "netns" and no load before, it
        loads first)
    {"op": "auth", "user", "org", "pin", "state", "proof"} -> an `hal.auth` outcome (Accepted,
                                          Rejected, PinRequired, Unavailable, BadInput)
        ("proof": the tap's card proof, forwarded to the org's server unchanged, or absent)
    {"op": "exit"}                      -> (the keeper wipes what it holds and exits)

A reply that does not decode is a `ProtocolError`: the daemon treats the keeper as failed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from hal.auth import Accepted, AuthOutcome, BadInput, PinRequired, Rejected, Unavailable


class ProtocolError(Exception):
    """A keeper's reply that is not one of this protocol's."""


@dataclass(frozen=True)
class PolicyFacts:
    idle_timeout_s: float
    max_hold_s: float
    combined_mode: bool
    end_after_print: bool = False


@dataclass(frozen=True)
class ProfileFacts:
    """What the daemon learns of a fetched profile: nothing secret."""
    org: str
    remote_ts: tuple[str, ...]
    gateway: str                     # admitted by the device firewall, IKE with it alone
    policy: PolicyFacts
    device_networks: tuple[str, ...]  # the device's own networks when the profile arrived ("unknown")
    desk_keys: tuple[bytes, ...]     # the org's desk public keys (job owner proofs)
    outcomes_url: str | None = None  # the org's gateway agent: what became of delivered jobs
    local_id: str = ""               # the MFP's IKE identity (the desks name their queue after it)


@dataclass(frozen=True)
class LookupRefused:
    kind: str  # device-rejected | refused | unreachable | malformed


@dataclass(frozen=True)
class TunnelFacts:
    virtual_ip: str
    interface: str
    remote_ts: tuple[str, ...]


@dataclass(frozen=True)
class TunnelRefused:
    cause: str


FetchReply = ProfileFacts | LookupRefused
TunnelReply = TunnelFacts | TunnelRefused


@dataclass(frozen=True)
class TunnelLoaded:
    """The session is loaded into the sandbox's charon; IKE has not started."""


TunnelLoadReply = TunnelLoaded | TunnelRefused


def request(op: str, **fields) -> bytes:
    return (json.dumps({"op": op, **fields}) + "\n").encode()


# -- the keeper's side: replies to lines ----------------------------------------------------------

def encode(reply: FetchReply | TunnelLoadReply | TunnelReply | AuthOutcome) -> str:
    match reply:
        case ProfileFacts():
            p = reply.policy
            obj = {"org": reply.org, "remote_ts": list(reply.remote_ts), "gateway": reply.gateway,
                   "policy": {"idle_timeout_s": p.idle_timeout_s, "max_hold_s": p.max_hold_s,
                              "combined_mode": p.combined_mode, "end_after_print": p.end_after_print},
                   "device_networks": list(reply.device_networks),
                   "desk_keys": [base64.b64encode(k).decode() for k in reply.desk_keys],
                   "outcomes_url": reply.outcomes_url, "local_id": reply.local_id}
        case LookupRefused(kind=kind):
            obj = {"error": kind}
        case TunnelFacts():
            obj = {"virtual_ip": reply.virtual_ip, "interface": reply.interface, "remote_ts": list(reply.remote_ts)}
        case TunnelLoaded():
            obj = {"loaded": True}
        case TunnelRefused(cause=cause):
            obj = {"error": cause}
        case Accepted(user=u, as_user=who):
            obj = {"outcome": "accepted", "user": u, "as_user": who}
        case Rejected(user=u, message=m):
            obj = {"outcome": "rejected", "user": u, "message": m}
        case PinRequired(user=u, challenge=c, prompt=pr):
            obj = {"outcome": "pin-required", "user": u, "challenge": c.hex(), "prompt": pr}
        case Unavailable(reason=r):
            obj = {"outcome": "unavailable", "reason": r}
        case BadInput(reason=r):
            obj = {"outcome": "bad-input", "reason": r}
        case _:
            raise ProtocolError(f"not a reply: {type(reply).__name__}")
    return json.dumps(obj)


# -- the daemon's side: lines to replies ----------------------------------------------------------

def _object(line: bytes | str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError:
        raise ProtocolError("reply is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("reply is not an object")
    return obj


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{what}: not a list of strings")
    return tuple(value)


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{key}: not a string")
    return value


def decode_fetch(line: bytes | str) -> FetchReply:
    obj = _object(line)
    if "error" in obj:
        return LookupRefused(_text(obj, "error"))
    try:
        pol = obj["policy"]
        policy = PolicyFacts(float(pol["idle_timeout_s"]), float(pol["max_hold_s"]), bool(pol["combined_mode"]),
                             bool(pol.get("end_after_print", False)))
        keys = tuple(base64.b64decode(k, validate=True) for k in obj.get("desk_keys", ()))
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("fetch reply: policy or desk keys unreadable") from None
    url = obj.get("outcomes_url")
    if url is not None and not isinstance(url, str):
        raise ProtocolError("outcomes_url: not a string")
    local_id = obj.get("local_id", "")
    if not isinstance(local_id, str):
        raise ProtocolError("local_id: not a string")
    return ProfileFacts(_text(obj, "org"), _strings(obj.get("remote_ts"), "remote_ts"), _text(obj, "gateway"),
                        policy, _strings(obj.get("device_networks", ["unknown"]), "device_networks"), keys, url,
                        local_id[:128])


def decode_tunnel(line: bytes | str) -> TunnelReply:
    obj = _object(line)
    if "error" in obj:
        return TunnelRefused(_text(obj, "error"))
    return TunnelFacts(_text(obj, "virtual_ip"), _text(obj, "interface"), _strings(obj.get("remote_ts"), "remote_ts"))


def decode_tunnel_load(line: bytes | str) -> TunnelLoadReply:
    obj = _object(line)
    if "error" in obj:
        return TunnelRefused(_text(obj, "error"))
    if obj.get("loaded") is not True:
        raise ProtocolError("tunnel_load: neither loaded nor an error")
    return TunnelLoaded()


def decode_auth(line: bytes | str) -> AuthOutcome:
    obj = _object(line)
    match obj.get("outcome"):
        case "accepted":
            return Accepted(_text(obj, "user"), str(obj.get("as_user") or ""))
        case "rejected":
            return Rejected(_text(obj, "user"), str(obj.get("message", "")))
        case "pin-required":
            try:
                challenge = bytes.fromhex(_text(obj, "challenge"))
            except ValueError:
                raise ProtocolError("challenge is not hex") from None
            return PinRequired(_text(obj, "user"), challenge, str(obj.get("prompt", "")))
        case "unavailable":
            return Unavailable(str(obj.get("reason", "")))
        case "bad-input":
            return BadInput(str(obj.get("reason", "")))
    raise ProtocolError("auth reply has no known outcome")
