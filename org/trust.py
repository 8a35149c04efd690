"""An org's certificate mode (issue 18): the org's own CA, and the coworking space's device CA it
trusts, for `tenantprint org gateway-config|radius-config|profile` with `"trust": "cert"`.

    tenantprint org ca init --org-id acme --out /etc/tenantprint/org-ca    # once, kept offline
    curl -o space-ca.pem https://<cloud>/v1/spaces/<space>/ca.pem            # the space's device CA

`init_ca` makes the org's CA (ECDSA P-256, `org/gateway_certs.py`): `ca.pem` (public; the profile
carries it so the MFP can verify the org's gateway and RADIUS server) and `ca.key` (0600, the org
admin's: it issues the gateway's and the RADIUS server's certificates when their configs are
generated). `load` reads both and the space's device CA (what the gateway and the RADIUS server
trust, for the contracted devices' identities only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from org.gateway_certs import CertAndKey, make_ca

CA_CERT, CA_KEY = "ca.pem", "ca.key"


class TrustError(ValueError):
    """The certificate mode's files are missing or unusable (the message names files, never keys)."""


@dataclass(frozen=True)
class OrgTrust:
    org_ca: CertAndKey
    device_ca_pem: str  # the coworking space's device CA (cloud/device_ca.py)


RADSEC_PORT = 2083  # RFC 6614


def certificate_profile(wire: dict, org_ca_pem: str) -> dict:
    """A wire profile in certificate mode from the same profile in PSK mode (with or without its
    secrets): the device shows its own certificate to the gateway (`vpn.auth` "device"), over
    RadSec to a RADIUS server (`org_ca_pem` verifies both), and in StartTLS to an LDAP server
    (`"bind": "device"`, SASL EXTERNAL; the LDAP server's own CA, `ca_pem`, stays: the directory
    maps the certificate to its service account's rights, org/ldap_config.py). No secret is left
    in it: the service account's `bind_dn` and `bind_password` go."""
    vpn = {k: v for k, v in wire["vpn"].items() if k != "psk"}
    vpn.update(auth="device", ca_cert_pem=org_ca_pem)
    auth = wire["auth"]
    if auth["kind"] == "radius":
        auth = {"kind": "radsec", "host": auth["host"], "port": RADSEC_PORT, "ca_pem": org_ca_pem,
                "user_format": auth["user_format"], "timeout_s": auth["timeout_s"], "retries": auth["retries"]}
    elif auth["kind"] == "ldap":
        auth = {**{k: v for k, v in auth.items() if k not in ("bind_dn", "bind_password")}, "bind": "device"}
    return {**wire, "vpn": vpn, "auth": auth}


def init_ca(org_id: str, out: Path | str) -> Path:
    """Make the org's CA in `out` (created 0700); never over an existing CA."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    if (d / CA_KEY).exists() or (d / CA_CERT).exists():
        raise TrustError(f"{d}: a CA is there already")
    ca = make_ca(org_id)
    fd = os.open(d / CA_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ca.key_pem())
    (d / CA_CERT).write_text(ca.cert_pem())
    return d


def load(org_ca_dir: Path | str, device_ca_file: Path | str) -> OrgTrust:
    d = Path(org_ca_dir)
    try:
        org_ca = CertAndKey.load((d / CA_CERT).read_bytes(), (d / CA_KEY).read_bytes())
    except OSError as exc:
        raise TrustError(f"the org CA in {d} cannot be read ({exc.strerror})") from None
    except ValueError:
        raise TrustError(f"the org CA in {d} is not a PEM certificate and its EC key") from None
    try:
        device_ca = Path(device_ca_file).read_text()
        cert = x509.load_pem_x509_certificate(device_ca.encode())
    except OSError as exc:
        raise TrustError(f"the space's device CA {device_ca_file} cannot be read ({exc.strerror})") from None
    except ValueError:
        raise TrustError(f"the space's device CA {device_ca_file} is not a PEM certificate") from None
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise TrustError(f"{device_ca_file} is not a CA certificate")
    except x509.ExtensionNotFound:
        raise TrustError(f"{device_ca_file} is not a CA certificate") from None
    return OrgTrust(org_ca, device_ca)
