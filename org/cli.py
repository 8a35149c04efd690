"""`tenantprint org ...`: the organization-side programs and generators.

    tenantprint org gateway-agent ...      (on the org's VPN gateway)
    tenantprint org desk-agent ...         (on a desk PC)
    tenantprint org gateway-config --org FILE --secrets FILE --out DIR
    tenantprint org radius-config  --org FILE --secrets FILE --out DIR
    tenantprint org profile        --org FILE --secrets FILE          (the wire profile on stdout)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

AGENTS = {"gateway-agent": "org.gateway_agent", "desk-agent": "org.desk_agent"}
GENERATORS = ("gateway-config", "radius-config", "profile")


def main(argv: list[str]) -> int:
    if argv and argv[0] in AGENTS:
        return importlib.import_module(AGENTS[argv[0]]).main(argv[1:])
    p = argparse.ArgumentParser(prog="tenantprint org")
    p.add_argument("cmd", choices=[*AGENTS, *GENERATORS])
    p.add_argument("--org", required=True, help="the org's description (JSON), see org/onboarding.py")
    p.add_argument("--secrets", required=True, help="the org's secrets file (JSON, mode 0600)")
    p.add_argument("--out", help="output directory (gateway-config, radius-config)")
    args = p.parse_args(argv)
    from org import onboarding

    try:
        org, secrets = onboarding.load(args.org, args.secrets)
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
