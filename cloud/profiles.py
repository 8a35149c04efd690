"""Splitting a wire profile into what may be stored in clear and what must be sealed.

The profile is validated with `SessionProfile.from_wire` (the shared contract) before anything is
stored, and every response is rebuilt from the two halves and validated again.
"""

from __future__ import annotations

import json

from hal.directory.profile import ProfileError, SessionProfile

SECRET_FIELDS = (("vpn", "psk"), ("vpn", "client_key_pem"), ("vpn", "eap_secret"),
                 ("auth", "secret"), ("auth", "bind_password"))


def normalize(wire: dict) -> dict:
    """The validated, normalized wire form (raises ProfileError, whose message has no secret)."""
    profile = SessionProfile.from_wire(wire)
    try:
        return profile.to_wire()
    finally:
        profile.wipe()


def split(wire: dict) -> tuple[dict, bytes]:
    """(public part, secrets as JSON bytes) of a normalized wire profile."""
    public = json.loads(json.dumps(wire))
    secret = {}
    for section, key in SECRET_FIELDS:
        if key in public[section]:
            secret[f"{section}.{key}"] = public[section].pop(key)
    return public, json.dumps(secret).encode()


def join(public: dict, secret_json: bytes) -> dict:
    wire = json.loads(json.dumps(public))
    for path, value in json.loads(secret_json).items():
        section, key = path.split(".", 1)
        wire[section][key] = value
    return wire


def secret_names(public: dict) -> list[str]:
    """Which secret fields this profile's kind needs (for `org show`: names, never values)."""
    names = []
    vpn, auth = public["vpn"]["auth"], public["auth"]["kind"]
    if vpn == "psk":
        names.append("vpn.psk")
    elif vpn == "pubkey":
        names.append("vpn.client_key_pem")
    elif vpn == "eap-mschapv2":
        names.append("vpn.eap_secret")
    # "device" (certificate mode, issue 18): the device's own certificate, no secret of the org's
    if auth == "radius":
        names.append("auth.secret")
    elif auth == "ldap" and public["auth"].get("bind") != "device":
        names.append("auth.bind_password")
    # "radsec", and "ldap" with "bind": "device": the device's certificate as TLS client
    # certificate (RadSec; StartTLS + SASL EXTERNAL), no secret of the org's
    return names


__all__ = ["ProfileError", "normalize", "split", "join", "secret_names"]
