"""`tenantprint org ...`: the organization-side programs."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    commands = {"gateway-agent": "org.gateway_agent", "desk-agent": "org.desk_agent"}
    if not argv or argv[0] not in commands:
        print(f"usage: tenantprint org {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])
