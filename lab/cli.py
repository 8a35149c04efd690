"""`tenantprint lab ...`: the lab's command line. JSON on stdout; exit 0 on success, non-zero
with a JSON `error` otherwise. Acceptance tests use it as a contract."""

from __future__ import annotations

import argparse
import json
import sys

from lab.host import LabError
from lab.lab import Lab


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tenantprint lab", description="the whole system on one machine")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="build the lab and start its daemons (idempotent)")
    sub.add_parser("down", help="stop everything and remove every trace of the lab")
    sub.add_parser("status", help="hosts, services and processes, as JSON")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    lab = Lab()
    try:
        if args.cmd == "up":
            out = lab.up()
        elif args.cmd == "down":
            out = lab.down()
        else:
            out = lab.status()
    except (LabError, OSError, RuntimeError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(out, indent=2))
    return 0
