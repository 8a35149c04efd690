"""`tenantprint org ...`: the organization-side programs and generators.

    tenantprint org gateway-agent ...      (on the org's VPN gateway)
    tenantprint org desk-agent ...         (on a desk PC)
    tenantprint org gateway-config --org FILE --secrets FILE --out DIR
    tenantprint org radius-config  --org FILE --secrets FILE --out DIR
    tenantprint org profile        --org FILE --secrets FILE          (the wire profile on stdout)
    tenantprint org desk-key       --org-id ORG --out FILE            (on a desk PC, as root: the org's
                                   desk signing key; prints the public key for `desks.keys`)
    tenantprint org desk-backend install [--backend-dir DIR] [--key FILE]   (on a desk PC, as root)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

AGENTS = {"gateway-agent": "org.gateway_agent", "desk-agent": "org.desk_agent",
          "desk-backend": "org.desk_backend"}
GENERATORS = ("gateway-config", "radius-config", "profile")


def desk_key_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tenantprint org desk-key")
    p.add_argument("--org-id", required=True)
    p.add_argument("--out", default=None, help="the key file (default /etc/tenantprint/desk-key.json)")
    args = p.parse_args(argv)
    from org import desk_key

    try:
        key = desk_key.generate(args.org_id)
        path = desk_key.write(key, args.out or desk_key.DEFAULT_PATH)
    except (OSError, ValueError) as exc:
        print(f"tenantprint org desk-key: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"org_id": key.org_id, "key_file": str(path), "public_key": key.public_b64}))
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] in AGENTS:
        return importlib.import_module(AGENTS[argv[0]]).main(argv[1:])
    if argv and argv[0] == "desk-key":
        return desk_key_main(argv[1:])
    p = argparse.ArgumentParser(prog="tenantprint org")
    p.add_argument("cmd", choices=[*AGENTS, *GENERATORS])
    p.add_argument("--org", required=True, help="the org's description (JSON), see org/onboarding.py")
    p.add_argument("--secrets", required=True, help="the org's secrets file (JSON, mode 0600)")
    p.add_argument("--out", help="output directory (gateway-config, radius-config)")
    args = p.parse_args(argv)
    from org import onboarding

    try:
        org, secrets = onboarding.load(args.org, args.secrets)
        warning = onboarding.missing_desks(org)
        if warning:
            print(f"tenantprint org {args.cmd}: warning: {warning}", file=sys.stderr)
        if args.cmd == "profile":
            json.dump(onboarding.profile(org, secrets), sys.stdout)
            print()
            return 0
        if not args.out:
            p.error(f"{args.cmd} needs --out")
        if args.cmd == "gateway-config":
            onboarding.write_gateway_config(org, secrets, args.out)
        else:
            onboarding.write_radius_config(org, secrets, args.out)
    except (OSError, ValueError, KeyError) as exc:
        print(f"tenantprint org {args.cmd}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.cmd}: written to {args.out}")
    return 0
