"""The lab's organizations, their secrets, and the session profile the cloud serves for each.

- `acme` and `globex` have a contract with the lab's coworking space and a gateway (`gw-<org>`);
  both LANs are 10.20.0.0/24, so only the session tells them apart.
- `initech` has no contract (the cloud must refuse it) and no gateway host: its profile points at
  an unused WAN address, which makes it the lab's unreachable gateway too.
- `umbrella` (EXTRA_ORGS) is in the lab only when asked for (`lab up --extra-orgs 1`, a benchmark of
  many orgs at once): then it is contracted and has its gateway, RADIUS server, gateway agent and
  desk like acme and globex, its LAN 10.20.0.0/24 too. The default lab has the two contracted orgs.

Every secret contains a CANARY (`TPCANARY-<org>-<kind>-<hex>`), generated once per lab and kept in
`<lab>/data/orgs/secrets.json` (mode 0600), so a scanner can prove that no org secret is left on
the MFP: grep for `CANARY_MARK` anywhere outside the lab's data dir.

Each org also has a desk signing key (org/desk_key.py), made once per lab and kept in
`<lab>/data/orgs/desk-keys.json` (0600); its public half is in the org's profile
(`print.desk_keys`), its private half goes to the org's desk host only (lab/services/org_agents.py).
"""

from __future__ import annotations

import json
import os
import secrets as _random
from dataclasses import dataclass
from pathlib import Path

from org.gateway_config import DeviceGrant, OrgGateway
from lab.topology import ORG_LAN

CANARY_MARK = "TPCANARY-"
DEVICE_ID = "mfp-1.space-1"  # the MFP's IKE identity (the cloud's device id)
POOL = "10.20.0.200-10.20.0.239"
RADIUS_HOST = "10.20.0.50"
DESK_NETWORKS = (f"{RADIUS_HOST}/32",)  # the lab's desk PC is the lan host, beside the auth server
IKE_PROPOSALS = ("aes256gcm16-prfsha384-x25519", "aes256-sha256-x25519")
ESP_PROPOSALS = ("aes256gcm16", "aes256-sha256")
SECRET_KINDS = ("psk", "radius", "eap", "ldap")


@dataclass(frozen=True)
class OrgSpec:
    org_id: str
    contracted: bool
    gateway_host: str | None  # lab host of the gateway, None when the org has none
    wan_address: str

    @property
    def gateway_id(self) -> str:
        return f"gw.{self.org_id}"


ORGS = {
    "acme": OrgSpec("acme", True, "gw-acme", "10.78.0.11"),
    "globex": OrgSpec("globex", True, "gw-globex", "10.78.0.12"),
    "initech": OrgSpec("initech", False, None, "10.78.0.13"),
}
CONTRACTED = tuple(o for o, s in ORGS.items() if s.contracted)
# Contracted orgs the lab runs only on request (`LabOptions.extra_orgs`), in this order.
EXTRA_ORGS = {
    "umbrella": OrgSpec("umbrella", True, "gw-umbrella", "10.78.0.14"),
}
_KNOWN = {**ORGS, **EXTRA_ORGS}  # secrets and desk keys are made for these


def spec(org: str) -> OrgSpec:
    try:
        return _KNOWN[org]
    except KeyError:
        raise KeyError(f"no org {org!r} in the lab (orgs: {', '.join(_KNOWN)})") from None


def lab_orgs(extra_orgs: int = 0) -> tuple[str, ...]:
    """The orgs of a lab with `extra_orgs` extra orgs: every org of ORGS, then the extra ones."""
    return (*ORGS, *contracted(extra_orgs)[len(CONTRACTED):])


def contracted(extra_orgs: int = 0) -> tuple[str, ...]:
    """The contracted orgs (each with a gateway) of a lab with `extra_orgs` extra orgs."""
    if not 0 <= extra_orgs <= len(EXTRA_ORGS):
        raise ValueError(f"extra orgs must be between 0 and {len(EXTRA_ORGS)}")
    return CONTRACTED + tuple(EXTRA_ORGS)[:extra_orgs]


def _secrets_path(lab) -> Path:
    return lab.layout.data_dir("orgs") / "secrets.json"


def all_secrets(lab) -> dict[str, dict[str, str]]:
    """Every org's secrets, generated on first use and then read back (the same for the lab's life)."""
    path = _secrets_path(lab)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fresh = {org: {kind: f"{CANARY_MARK}{org}-{kind}-{_random.token_hex(16)}" for kind in SECRET_KINDS}
                 for org in _KNOWN}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(fresh, f)
        try:
            os.link(tmp, path)  # the first writer wins; a concurrent one reads the winner's file
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return json.loads(path.read_text())


def org_secrets(lab, org: str) -> dict[str, str]:
    spec(org)
    return all_secrets(lab)[org]


def canaries(lab) -> list[str]:
    """Every secret of every org (each contains CANARY_MARK): what must never leak."""
    return [v for per_org in all_secrets(lab).values() for v in per_org.values()]


def org_gateway(lab, org: str, backend: str = "libipsec", *, device_ca_pem: str = "") -> OrgGateway:
    """The description `org/gateway_config.py` turns into the org gateway's strongSwan config. With
    `device_ca_pem` (the space's device CA) the MFP is in certificate mode (issue 18): it shows its
    device certificate, the gateway its own (`gateway_identity`), and no PSK exists."""
    s = spec(org)
    if s.gateway_host is None:
        raise KeyError(f"org {org!r} has no gateway in the lab")
    if device_ca_pem:
        ident = gateway_identity(lab, org)
        certs = dict(device_ca_pem=device_ca_pem, gateway_cert_pem=ident.cert_pem(), gateway_key_pem=ident.key_pem())
        grant = DeviceGrant(DEVICE_ID, "cert")
    else:
        certs, grant = {}, DeviceGrant(DEVICE_ID, "psk", org_secrets(lab, org)["psk"].encode())
    return OrgGateway(
        org_id=org, gateway_id=s.gateway_id, wan_address=s.wan_address, lan=ORG_LAN, pool=POOL, **certs,
        devices=(grant,),
        ike_proposals=IKE_PROPOSALS, esp_proposals=ESP_PROPOSALS, dpd_delay_s=1, backend=backend,
        lan_reserved=("10.20.0.1", RADIUS_HOST), auth_host=RADIUS_HOST, lan_address="10.20.0.1",
        desk_networks=DESK_NETWORKS,
    )


def gateway_ca(lab, org: str):
    """Org `org`'s gateway CA (org/gateway_certs.py), the same for the lab's life."""
    return _gateway_certs(lab, org)[0]


def _made_once(path: Path, make) -> object:
    """The JSON in `path`, made by `make()` the first time (0600 in a 0700 directory; when two
    make it at once, the first writer wins and both read its file)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(make(), f)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return json.loads(path.read_text())


def radius_server_identity(lab, org: str):
    """Org `org`'s RADIUS server certificate (RadSec), from its gateway CA, for its address."""
    from org import gateway_certs

    def make():
        ident = gateway_certs.issue_gateway_cert(gateway_ca(lab, org), RADIUS_HOST)
        return [ident.cert_pem(), ident.key_pem().decode()]

    cert, key = _made_once(lab.layout.data_dir("orgs") / f"radius-cert-{org}.json", make)
    return gateway_certs.CertAndKey.load(cert, key.encode())


def gateway_identity(lab, org: str):
    """Org `org`'s gateway certificate and key, issued by its gateway CA to its IKE identity."""
    return _gateway_certs(lab, org)[1]


def _gateway_certs(lab, org: str):
    from org import gateway_certs

    s = spec(org)

    def make():
        ca = gateway_certs.make_ca(org)
        gw = gateway_certs.issue_gateway_cert(ca, s.gateway_id)
        return {"ca": [ca.cert_pem(), ca.key_pem().decode()], "gw": [gw.cert_pem(), gw.key_pem().decode()]}

    entry = _made_once(lab.layout.data_dir("orgs") / f"gateway-certs-{org}.json", make)
    return (gateway_certs.CertAndKey.load(entry["ca"][0], entry["ca"][1].encode()),
            gateway_certs.CertAndKey.load(entry["gw"][0], entry["gw"][1].encode()))


def space_device_ca(lab, space: str = "space-1") -> str:
    """The space's device CA certificate (PEM), from the lab's cloud (cloud/device_ca.py)."""
    from lab.services import cloud

    return cloud.space_ca_pem(lab, space)


def desk_key(lab, org: str):
    """Org `org`'s desk signing key (org/desk_key.DeskKey), the same for the lab's life."""
    from org import desk_key as dk

    spec(org)
    entry = _made_once(lab.layout.data_dir("orgs") / "desk-keys.json",
                       lambda: {o: json.loads(dk.to_json(dk.generate(o))) for o in _KNOWN})[org]
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return dk.DeskKey(entry["org_id"], Ed25519PrivateKey.from_private_bytes(base64.b64decode(entry["private_key"])))


def lab_profile(lab, org: str, auth_kind: str = "radius", trust: str = "psk") -> dict:
    """The wire profile (see hal/directory/profile.py) the cloud serves the MFP for `org`; its auth
    server is the org's FreeRADIUS, or its slapd with `auth_kind="ldap"` (lab/services/ldap.py).
    `trust="cert"` (issue 18): the MFP shows its device certificate to the gateway and, over
    RadSec, to the RADIUS server; the profile then holds only public facts."""
    if trust == "cert":
        from org.trust import certificate_profile

        # the org's CA: its gateway's and its RADIUS server's certificates
        return certificate_profile(lab_profile(lab, org, auth_kind), gateway_ca(lab, org).cert_pem())
    s = spec(org)
    sec = org_secrets(lab, org)
    if auth_kind == "ldap":
        from lab.services import ldap

        auth = {"kind": "ldap", "host": RADIUS_HOST, "port": 389, "base_dn": ldap.base_dn(org),
                "bind_dn": ldap.service_dn(org), "bind_password": sec["ldap"], "user_attr": "uid",
                "card_attr": ldap.CARD_ATTR, "timeout_s": 3, "ca_pem": ldap.ca_pem(lab, org, RADIUS_HOST)}
    elif auth_kind == "radius":
        auth = {"kind": "radius", "host": RADIUS_HOST, "port": 1812, "secret": sec["radius"],
                "user_format": "{user}@{org}", "timeout_s": 3.0, "retries": 2}
    else:
        raise ValueError(f"unknown auth kind {auth_kind!r}")
    from lab.services.org_agents import GATEWAY_AGENT_PORT, GATEWAY_LAN_ADDRESS

    return {
        "org_id": org,
        "ttl_s": 300,
        "vpn": {
            "gateway": s.wan_address, "port": 500, "local_id": DEVICE_ID, "remote_id": s.gateway_id,
            "auth": "psk", "psk": sec["psk"], "ca_cert_pem": None,
            "ike_proposals": list(IKE_PROPOSALS), "esp_proposals": list(ESP_PROPOSALS),
            "remote_ts": [ORG_LAN], "dpd_delay_s": 1,
        },
        "auth": auth,
        "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False},
        "print": {"desk_keys": [desk_key(lab, org).public_b64],
                  "outcomes_url": f"http://{GATEWAY_LAN_ADDRESS}:{GATEWAY_AGENT_PORT}/v1/outcomes"},
    }
