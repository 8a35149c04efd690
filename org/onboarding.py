"""An organization's onboarding, from one description file and one secrets file:
its gateway's strongSwan config, its FreeRADIUS config, and the session profile the cloud serves.

Description (JSON; unknown keys are errors):

    {"org_id": "acme", "name": "Acme Corp",
     "gateway": {"id": "gw.acme", "wan_address": "203.0.113.10", "lan": "10.20.0.0/24",
                 "pool": "10.20.0.200-10.20.0.239", "devices": ["mfp-1.space-1"],
                 "backend": "kernel", "dpd_delay_s": 1,
                 "lan_address": "10.20.0.1"},          # optional: the LAN's first host address
     "radius": {"host": "10.20.0.50", "port": 1812, "user_format": "{user}@{org}",
                "require_message_authenticator": false,   # optional: true when the server signs replies
                "users": [{"id": "alice", "kind": "card"}, {"id": "bob", "kind": "pin", "pin": "2468"},
                          {"id": "dave", "kind": "disabled"}]},
     "desks": {"networks": ["10.20.0.64/26"], "keys": ["<desk public key, base64>"]},
     "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": false}}

`desks`: `networks` are where the desk PCs that print to the MFP sit (with the RADIUS host, the only
part of the LAN the MFP's child SA reaches, org/gateway_config.py); `keys` are the public halves of
the org's desk signing keys (`tenantprint org desk-key`, org/desk_key.py), which the profile
carries as `print.desk_keys`. Without `desks` (descriptions written before it existed) the desks
are taken to be on the RADIUS host and the profile has no desk key: it fails closed, no job of the
org can be proven and none prints; `missing_desks(org)` says so, and the CLI prints it.

A "card" user may carry a `pin`: the fallback PIN, asked for only when the tap brings no card proof
(a card-only user without one is rejected then).

Secrets (JSON, mode 0600, made by `provisioning/onboard-org.sh`): {"psk": "...", "radius": "..."},
and once a card is issued (`tenantprint org card issue`, org/card_issue.py) `"cards": {"<user>":
{"uid": hex, "k_meta": hex, "k_file": hex}}`: each user's NTAG 424 DNA card and its two keys, which
`radius()` attaches to the user (a card for a user who is not in `radius.users`, or who is disabled,
is an error that names the user).

`"trust"`: `"psk"` (the default, the weaker mode) or `"cert"` (issue 18). In PSK mode every device
the org accepts shares the org's PSK, and the profile carries it and the RADIUS secret to the
device. In certificate mode the generators also take the org's CA and the space's device CA
(`--org-ca DIR --device-ca FILE`, org/trust.py): the gateway shows a certificate of the org's CA and
takes each listed device by its certificate from the space's CA (no PSK), the RADIUS server serves
RadSec only (no shared secret on the wire or in the profile; the server's certificate from the
org's CA, clients only the listed devices), and the profile holds only public facts (the org's CA
to verify both). The secrets file then needs no `psk` and no `radius`.
"""

from __future__ import annotations

import json
from pathlib import Path

from hal.card.badge import valid_id
from org.card_sun import Card
from org.gateway_config import (DeviceGrant, OrgGateway, strongswan_conf, swanctl_conf, validate,
                                write_credential_files)
from org.radius_config import OrgRadius, RadiusUser, RadsecListener, write_config_dir, write_radsec_files

IKE_PROPOSALS = ("aes256gcm16-prfsha384-x25519", "aes256-sha256-x25519")
ESP_PROPOSALS = ("aes256gcm16", "aes256-sha256")


class OnboardingError(ValueError):
    """The description or the secrets are unusable; the message names the key, never a secret."""


def _take(obj: dict, where: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(obj, dict):
        raise OnboardingError(f"{where}: expected an object")
    missing = required - set(obj)
    unknown = set(obj) - required - optional
    if missing or unknown:
        raise OnboardingError(f"{where}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return obj


def load(org_file: Path | str, secrets_file: Path | str) -> tuple[dict, dict]:
    org = json.loads(Path(org_file).read_text())
    _take(org, "org", {"org_id", "gateway", "radius"}, {"name", "policy", "desks", "trust"})
    if org.get("trust", "psk") not in ("psk", "cert"):
        raise OnboardingError("trust: expected \"psk\" or \"cert\"")
    if "desks" in org:
        _take(org["desks"], "desks", {"networks", "keys"})
        for key in ("networks", "keys"):
            if not isinstance(org["desks"][key], list) or not org["desks"][key]:
                raise OnboardingError(f"desks.{key}: expected a non-empty list")
    _take(org["gateway"], "gateway", {"id", "wan_address", "lan", "pool", "devices"},
          {"backend", "dpd_delay_s", "lan_address"})
    _take(org["radius"], "radius", {"host", "users"}, {"port", "user_format", "require_message_authenticator"})
    if not isinstance(org["radius"].get("require_message_authenticator", False), bool):
        raise OnboardingError("radius.require_message_authenticator: expected true or false")
    secrets = json.loads(Path(secrets_file).read_text())
    if cert_mode(org):  # nothing of the org's goes to a device: no PSK, no RADIUS secret
        _take(secrets, "secrets", set(), {"cards"})
    else:
        _take(secrets, "secrets", {"psk", "radius"}, {"cards"})
    if not isinstance(secrets.get("cards", {}), dict):
        raise OnboardingError("secrets.cards: expected an object")
    return org, secrets


def cert_mode(org: dict) -> bool:
    return org.get("trust", "psk") == "cert"


def _need_trust(org: dict, trust):
    if cert_mode(org) and trust is None:
        raise OnboardingError("trust is cert: give the org's CA and the space's device CA (--org-ca, --device-ca)")
    return trust if cert_mode(org) else None


def gateway(org: dict, secrets: dict, trust=None) -> OrgGateway:
    """`trust` (org/trust.py `OrgTrust`): needed in certificate mode."""
    g = org["gateway"]
    if not g["devices"]:
        raise OnboardingError("gateway.devices: at least one device")
    trust = _need_trust(org, trust)
    if trust is not None:
        from org.gateway_certs import issue_gateway_cert

        ident = issue_gateway_cert(trust.org_ca, g["id"])
        grants = tuple(DeviceGrant(d, "cert") for d in g["devices"])
        certs = dict(device_ca_pem=trust.device_ca_pem, gateway_cert_pem=ident.cert_pem(),
                     gateway_key_pem=ident.key_pem())
    else:
        grants, certs = tuple(DeviceGrant(d, "psk", secrets["psk"].encode()) for d in g["devices"]), {}
    gw = OrgGateway(
        org_id=org["org_id"], gateway_id=g["id"], wan_address=g["wan_address"], lan=g["lan"], pool=g["pool"],
        devices=grants, **certs,
        ike_proposals=IKE_PROPOSALS, esp_proposals=ESP_PROPOSALS,
        dpd_delay_s=g.get("dpd_delay_s", 1), backend=g.get("backend", "kernel"),
        lan_reserved=(org["radius"]["host"],), auth_host=org["radius"]["host"], lan_address=_lan_address(g),
        desk_networks=tuple(org["desks"]["networks"]) if "desks" in org else (org["radius"]["host"] + "/32",))
    validate(gw)
    return gw


def _lan_address(g: dict) -> str:
    """The gateway's own LAN address: `gateway.lan_address`, or the LAN's first host address."""
    import ipaddress

    if "lan_address" in g:
        return g["lan_address"]
    try:
        return str(next(ipaddress.IPv4Network(g["lan"], strict=True).hosts()))
    except (ValueError, StopIteration):
        raise OnboardingError("gateway.lan: not an IPv4 network with hosts") from None


def radius(org: dict, secrets: dict, trust=None, out: Path | str | None = None) -> OrgRadius:
    """In certificate mode (`trust`, and `out`: the config directory the RadSec files go in) the
    server serves RadSec only, to the listed devices."""
    r = org["radius"]
    trust = _need_trust(org, trust)
    cards = _cards(r["users"], secrets.get("cards", {}))
    users = tuple(RadiusUser(_take(u, "radius.users[]", {"id", "kind"}, {"pin"})["id"], u["kind"], u.get("pin"),
                             card=cards.get(u["id"]))
                  for u in r["users"])
    if trust is not None:
        if out is None:
            raise OnboardingError("certificate mode: the RADIUS config needs its directory")
        tls = Path(out).resolve() / "radsec"
        listener = RadsecListener(str(tls / "server.pem"), str(tls / "server.key"), str(tls / "space-device-ca.pem"),
                                  allowed_clients=tuple(org["gateway"]["devices"]))
        return OrgRadius(org_id=org["org_id"], secret=b"", clients=(org["gateway"]["pool"],), users=users,
                         port=r.get("port", 1812), radsec=listener, radsec_only=True)
    return OrgRadius(org_id=org["org_id"], secret=secrets["radius"].encode(), clients=(org["gateway"]["pool"],),
                     users=users, port=r.get("port", 1812))


def _cards(users: list, cards: dict) -> dict[str, Card]:
    """The issued cards by user id; an error names the user (a valid id only), never a key or UID."""
    if not isinstance(users, list):
        raise OnboardingError("radius.users: expected a list")
    kinds = {u.get("id"): u.get("kind") for u in users if isinstance(u, dict)}
    out = {}
    for user, obj in cards.items():
        who = user if valid_id(user) else "(not a valid user id)"
        if user not in kinds:
            raise OnboardingError(f"secrets.cards: {who}: not in radius.users (revoke the card)")
        if kinds[user] == "disabled":
            raise OnboardingError(f"secrets.cards: {who}: a disabled user has no card (revoke it)")
        try:
            out[user] = Card.from_json(obj)
        except ValueError as exc:  # its message names no key
            raise OnboardingError(f"secrets.cards: {who}: {exc}") from None
    return out


GATEWAY_AGENT_PORT = 8631  # `tenantprint org gateway-agent --listen` (its default port)


def profile(org: dict, secrets: dict, trust=None) -> dict:
    """The wire profile (hal/directory/profile.py) for the cloud; in certificate mode (`trust`) it
    holds no secret: the device shows its certificate, the org's CA verifies the org's servers."""
    g, r = org["gateway"], org["radius"]
    trust = _need_trust(org, trust)
    wire = {
        "org_id": org["org_id"], "ttl_s": 300,
        "vpn": {"gateway": g["wan_address"], "port": 500, "local_id": g["devices"][0], "remote_id": g["id"],
                "auth": "psk", "ca_cert_pem": None,
                "ike_proposals": list(IKE_PROPOSALS), "esp_proposals": list(ESP_PROPOSALS),
                "remote_ts": [g["lan"]], "dpd_delay_s": g.get("dpd_delay_s", 1)},
        "auth": {"kind": "radius", "host": r["host"], "port": r.get("port", 1812),
                 "user_format": r.get("user_format", "{user}@{org}"), "timeout_s": 3.0, "retries": 2,
                 # the org's server signs its replies: the MFP takes no unsigned one (BlastRADIUS)
                 **({"require_message_authenticator": True} if r.get("require_message_authenticator") else {})},
        "policy": org.get("policy", {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False}),
        "print": {**({"desk_keys": list(org["desks"]["keys"])} if "desks" in org else {}),
                  # the gateway agent on the gateway's LAN address: reached through the tunnel only
                  "outcomes_url": f"http://{_lan_address(g)}:{GATEWAY_AGENT_PORT}/v1/outcomes"},
    }
    if trust is not None:
        from org.trust import certificate_profile

        return certificate_profile(wire, trust.org_ca.cert_pem())
    wire["vpn"]["psk"], wire["auth"]["secret"] = secrets["psk"], secrets["radius"]
    return wire


def missing_desks(org: dict) -> str | None:
    """A warning when the description has no `desks` (see the module docstring), else None."""
    if "desks" in org:
        return None
    return ("desks: not described: the MFP's tunnel reaches the RADIUS host only, and with no desk key "
            "registered no job of this org will print (tenantprint org desk-key, then desks.keys)")


def write_gateway_config(org: dict, secrets: dict, out: Path | str, trust=None) -> Path:
    """strongswan.conf + swanctl.conf for the org's gateway, in `out` (0700, files 0600); in
    certificate mode also its certificate, key and the space's device CA beside them."""
    gw = gateway(org, secrets, trust)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    for name, text in (("strongswan.conf", strongswan_conf(gw)), ("swanctl.conf", swanctl_conf(gw))):
        path = d / name
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(text)
    write_credential_files(gw, d)
    return d


def write_radius_config(org: dict, secrets: dict, out: Path | str, trust=None) -> Path:
    cfg = radius(org, secrets, trust, out)
    if cfg.radsec is not None:  # its certificate from the org's CA, for its address; the space's device CA
        from org.gateway_certs import issue_gateway_cert

        ident = issue_gateway_cert(trust.org_ca, org["radius"]["host"])
        write_radsec_files(cfg.radsec, ident.cert_pem(), ident.key_pem(), trust.device_ca_pem)
    return write_config_dir(cfg, out)
