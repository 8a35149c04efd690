"""An organization's strongSwan gateway configuration, generated from a description of the org.

`OrgGateway` says who the gateway is (IKE identity, WAN address), which LAN it serves, which
virtual-IP pool inside that LAN it hands to shared-office MFPs, and which MFPs (IKE identities and
their auth) it accepts. From it:

- `strongswan_conf(gw)`: charon's own settings (no secrets). It loads the `farp` plugin: the pool
  lies inside the LAN, so a desk PC on the LAN ARPs for an MFP's virtual IP and the gateway must
  answer for it; charon then routes the packet into the tunnel (table 220; with kernel-libipsec,
  out through `ipsec0`).
- `swanctl_conf(gw)`: connections, the pool and the secrets, for `swanctl --load-all --file`. It
  holds the PSKs: write it mode 0600 on the gateway only.
- `credential_files(gw)`: for MFPs in certificate mode (`DeviceGrant(auth="cert")`, issue 18), the
  files beside swanctl.conf that swanctl loads: `x509/gateway.pem` and `private/gateway.key` (the
  gateway's own certificate, `org/gateway_certs.py`; the key 0600) and `x509ca/space-device-ca.pem`
  (the coworking space's device CA, from the cloud: it vouches for the MFP's identity for a day at a
  time; its CRLs go in `x509crl/`). Such a connection authenticates both sides with certificates and
  names exactly the device's identity. A second IKE SA with the device's identity (a copied key)
  must not take over the one that is up: strongSwan's `unique = keep` cannot promise that (the
  newcomer's INITIAL_CONTACT replaces the SA that is up), so the connection is `unique = never` and
  the gateway agent ends every SA but the first per device identity. No secret of the org is in
  it, and none goes to the device.

Connections are named `mfp-<device>` so the gateway agent can follow them (`--conn-prefix mfp-`).

The MFP's child SA is narrowed to what a session needs (issue 13): its `local_ts` is the org's
authentication server (`auth_host`, a /32) and the networks of the desk PCs that print to it
(`desk_networks`), not the whole LAN: the MFP, a device shared with other tenants, gets no route to
the org's other hosts. It is written as one address range, from the lowest to the highest of
these and the gateway's own LAN address (`lan_address`): charon routes the MFP's virtual IP with a
source address of its own inside each local selector, and refuses a CHILD_SA whose selector holds
none ("error installing route", kernel-libipsec, measured with a list of /32s). So the range is
exact only when the desks and the auth server sit next to the gateway's address; put them there
(in the lab: 10.20.0.1-10.20.0.50 of the /24), and let the gateway's firewall drop the rest.
Charon reports a range as `first..last` in its SA listings. The profile's `remote_ts` stays the org LAN: the MFP proposes it and this
gateway narrows it; the MFP intersects what was negotiated with its profile and checks that its
virtual IP (from the pool, inside the LAN: desks ARP for it and `farp` answers) lies inside.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from hal.tunnel.charon_conf import strongswan_conf as _charon_conf

CONN_PREFIX = "mfp-"
_IKE_ID = re.compile(r"^[A-Za-z0-9@._=,:/+-]{1,255}$")
_ORG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PROPOSAL = re.compile(r"^[a-z0-9_-]{1,120}$")


class GatewayConfigError(ValueError):
    """The org description is inconsistent; the message names the field, never a secret."""


@dataclass(frozen=True)
class DeviceGrant:
    """One shared-office MFP the org accepts: its IKE identity and how it authenticates."""

    device_id: str
    auth: str = "psk"  # psk | cert (its device certificate from the space's CA)
    psk: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class OrgGateway:
    org_id: str
    gateway_id: str  # the gateway's IKE identity
    wan_address: str
    lan: str  # e.g. 10.20.0.0/24
    pool: str  # first-last, inside `lan`, e.g. 10.20.0.200-10.20.0.239
    devices: tuple[DeviceGrant, ...]
    ike_proposals: tuple[str, ...] = ("aes256gcm16-prfsha384-x25519", "aes256-sha256-x25519")
    esp_proposals: tuple[str, ...] = ("aes256gcm16", "aes256-sha256")
    dpd_delay_s: int = 1
    backend: str = "libipsec"
    lan_reserved: tuple[str, ...] = ()  # addresses in the LAN that are taken (gateway, servers)
    auth_host: str = ""  # the org's RADIUS/LDAP server the MFP asks through the tunnel (required)
    lan_address: str = ""  # the gateway's own address on the LAN (required)
    desk_networks: tuple[str, ...] = ()  # where the desk PCs that print to the MFP are (required)
    # certificate mode (devices with auth "cert"): the space's device CA and the gateway's own
    # certificate and key (org/gateway_certs.py)
    device_ca_pem: str = ""
    gateway_cert_pem: str = ""
    gateway_key_pem: bytes = field(default=b"", repr=False)


def local_ts(gw: OrgGateway) -> list[str]:
    """The gateway's side of the MFP's child SA: one range (a CIDR when it is one) from the lowest
    to the highest of the gateway's own LAN address, the auth server and the desks' networks.
    Raises GatewayConfigError unless each lies inside the LAN."""
    try:
        lan = ipaddress.IPv4Network(gw.lan, strict=True)
        auth = ipaddress.IPv4Address(gw.auth_host)
    except ValueError:
        raise GatewayConfigError("auth_host: expected the auth server's IPv4 address inside the LAN") from None
    try:
        own = ipaddress.IPv4Address(gw.lan_address)
    except ValueError:
        raise GatewayConfigError("lan_address: expected the gateway's IPv4 address on the LAN") from None
    if own not in lan:
        raise GatewayConfigError(f"lan_address: {own} is not inside the LAN {lan}")
    if not gw.desk_networks:
        raise GatewayConfigError("desk_networks: at least one network of desk PCs")
    nets = [ipaddress.IPv4Network(f"{auth}/32")]
    for d in gw.desk_networks:
        try:
            nets.append(ipaddress.IPv4Network(d, strict=True))
        except ValueError:
            raise GatewayConfigError(f"desk_networks: {d!r} is not an IPv4 network") from None
    for n in nets:
        if not n.subnet_of(lan):
            which = "auth_host" if n == nets[0] else "desk_networks"
            raise GatewayConfigError(f"{which}: {n} is not inside the LAN {lan}")
    nets.append(ipaddress.IPv4Network(f"{own}/32"))
    first = min(n.network_address for n in nets)
    last = max(n.broadcast_address for n in nets)
    spans = list(ipaddress.summarize_address_range(first, last))
    return [str(spans[0])] if len(spans) == 1 else [f"{first}-{last}"]


def pool_range(gw: OrgGateway) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    try:
        first, last = (ipaddress.IPv4Address(p.strip()) for p in gw.pool.split("-"))
    except ValueError:
        raise GatewayConfigError("pool: expected first-last IPv4 addresses") from None
    return first, last


def validate(gw: OrgGateway) -> None:
    """Raise GatewayConfigError unless the description makes a working, unambiguous gateway."""
    if not _ORG.match(gw.org_id):
        raise GatewayConfigError("org_id: invalid")
    if not _IKE_ID.match(gw.gateway_id):
        raise GatewayConfigError("gateway_id: invalid IKE identity")
    try:
        ipaddress.IPv4Address(gw.wan_address)
        lan = ipaddress.IPv4Network(gw.lan, strict=True)
    except ValueError as exc:
        raise GatewayConfigError(f"wan_address/lan: {exc}") from None
    first, last = pool_range(gw)
    if first > last:
        raise GatewayConfigError("pool: first address after last")
    if first not in lan or last not in lan or first == lan.network_address or last == lan.broadcast_address:
        raise GatewayConfigError("pool: must lie inside the LAN's host addresses (desk PCs reach it there)")
    for taken in gw.lan_reserved:
        if first <= ipaddress.IPv4Address(taken) <= last:
            raise GatewayConfigError(f"pool: overlaps reserved LAN address {taken}")
    if not gw.devices:
        raise GatewayConfigError("devices: the gateway accepts no MFP")
    seen = set()
    for d in gw.devices:
        if not _IKE_ID.match(d.device_id):
            raise GatewayConfigError("devices: invalid IKE identity")
        if d.device_id in seen:
            raise GatewayConfigError(f"devices: {d.device_id} listed twice")
        seen.add(d.device_id)
        if d.auth not in ("psk", "cert"):
            raise GatewayConfigError(f"devices: auth {d.auth!r} is not supported (psk, cert)")
        if d.auth == "psk" and len(d.psk) < 20:
            raise GatewayConfigError(f"devices: the PSK of {d.device_id} is shorter than 20 bytes")
        if d.auth == "cert" and d.psk:
            raise GatewayConfigError(f"devices: {d.device_id} authenticates with its certificate: no PSK")
    if any(d.auth == "cert" for d in gw.devices):
        for what in ("device_ca_pem", "gateway_cert_pem"):
            if "-----BEGIN CERTIFICATE-----" not in getattr(gw, what):
                raise GatewayConfigError(f"{what}: a PEM certificate is needed for devices in certificate mode")
        if not bytes(gw.gateway_key_pem).lstrip().startswith(b"-----BEGIN ") or b" KEY" not in gw.gateway_key_pem:
            raise GatewayConfigError("gateway_key_pem: the gateway's private key is needed in certificate mode")
    for p in gw.ike_proposals + gw.esp_proposals:
        if not _PROPOSAL.match(p):
            raise GatewayConfigError("proposals: invalid proposal")
    if not 1 <= gw.dpd_delay_s <= 300:
        raise GatewayConfigError("dpd_delay_s: out of range")
    local_ts(gw)


GATEWAY_CERT, GATEWAY_KEY, DEVICE_CA = "gateway.pem", "gateway.key", "space-device-ca.pem"


def credential_files(gw: OrgGateway) -> dict[str, tuple[bytes, int]]:
    """The certificate mode's files beside swanctl.conf (relative path -> (content, mode)); empty
    when no device is in certificate mode."""
    validate(gw)
    if not any(d.auth == "cert" for d in gw.devices):
        return {}
    return {f"x509/{GATEWAY_CERT}": (gw.gateway_cert_pem.encode(), 0o644),
            f"x509ca/{DEVICE_CA}": (gw.device_ca_pem.encode(), 0o644),
            f"private/{GATEWAY_KEY}": (bytes(gw.gateway_key_pem), 0o600)}


def write_credential_files(gw: OrgGateway, swanctl_dir) -> None:
    """Write `credential_files(gw)` under `swanctl_dir` (directories 0700, atomic replace)."""
    import os
    from pathlib import Path

    for rel, (data, mode) in credential_files(gw).items():
        path = Path(swanctl_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def conn_name(device_id: str) -> str:
    return CONN_PREFIX + re.sub(r"[^a-z0-9]+", "-", device_id.lower()).strip("-")


def strongswan_conf(gw: OrgGateway, vici_socket: str = "/run/charon.vici") -> str:
    validate(gw)
    return _charon_conf(gw.backend, vici_socket=vici_socket, extra_plugins="farp")


def _q(value: str) -> str:
    return '"' + value + '"'  # identities are validated: no quotes or backslashes inside


def swanctl_conf(gw: OrgGateway) -> str:
    validate(gw)
    pool = f"pool-{gw.org_id}"
    ike = ", ".join(gw.ike_proposals)
    esp = ", ".join(gw.esp_proposals)
    narrowed = ", ".join(local_ts(gw))
    out = ["# generated by tenantprint for org " + gw.org_id + "; holds secrets: mode 0600", "connections {"]
    for d in gw.devices:
        if d.auth == "cert":
            # a copied device key must not take over the real MFP's SA. `keep` would not hold: a
            # peer's INITIAL_CONTACT makes charon 5.9 replace the SA that is up (measured,
            # tests/integration/test_tunnel_device_cert.py); `never` ignores it, and the gateway
            # agent ends every SA but the first for one device identity (org/gateway_agent.py)
            unique = "never"
            local = f"    local {{\n      auth = pubkey\n      certs = {GATEWAY_CERT}\n      id = {_q(gw.gateway_id)}\n    }}"
            remote = (f"    remote {{\n      auth = pubkey\n      cacerts = {DEVICE_CA}\n"
                      f"      id = {_q(d.device_id)}\n      revocation = relaxed\n    }}")
        else:
            unique = "replace"
            local = f"    local {{\n      auth = psk\n      id = {_q(gw.gateway_id)}\n    }}"
            remote = f"    remote {{\n      auth = psk\n      id = {_q(d.device_id)}\n    }}"
        out += [
            f"  {conn_name(d.device_id)} {{",
            "    version = 2",
            f"    local_addrs = {gw.wan_address}",
            f"    proposals = {ike}",
            f"    pools = {pool}",
            f"    dpd_delay = {gw.dpd_delay_s}s",
            f"    unique = {unique}",
            local,
            remote,
            "    children {",
            "      lan {",
            f"        local_ts = {narrowed}",
            f"        esp_proposals = {esp}",
            "        dpd_action = clear",
            "      }",
            "    }",
            "  }",
        ]
    out += ["}", "pools {", f"  {pool} {{", f"    addrs = {gw.pool}", "  }", "}", "secrets {"]
    for i, d in enumerate(gw.devices):
        if d.auth != "psk":
            continue
        out += [
            f"  ike-{i} {{",
            f"    id-gw = {_q(gw.gateway_id)}",
            f"    id-mfp = {_q(d.device_id)}",
            f"    secret = 0x{d.psk.hex()}",
            "  }",
        ]
    out.append("}")
    return "\n".join(out) + "\n"
