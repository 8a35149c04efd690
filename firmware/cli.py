"""`tenantprint firmware ...`: the MFP daemon and its small operator commands.

    tenantprint firmware run [--config FILE]      the daemon (systemd: Type=notify)
    tenantprint firmware enrol --cloud URL --token-file FILE [--ca-file FILE] [--config FILE]
    tenantprint firmware status [--config FILE]   JSON from the running daemon
    tenantprint firmware pin PIN | pin-cancel | clear-fault
    tenantprint firmware check [--config FILE]    self-check: programs, units, tunnel, reader, printer, clock
    tenantprint firmware --dump-config [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from firmware import config as fwconfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tenantprint firmware")
    p.add_argument("--config", type=Path, default=fwconfig.DEFAULT_PATH)
    p.add_argument("--dump-config", action="store_true", help="print the merged configuration and exit")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("run", help="run the daemon")
    e = sub.add_parser("enrol", help="first boot: make the device key and enrol with the cloud")
    e.add_argument("--cloud", required=True, help="the cloud's URL, e.g. https://cloud.example:8443")
    e.add_argument("--token-file", type=Path, required=True, help="file holding the one-time token")
    e.add_argument("--ca-file", default="", help="CA certificate that signs the cloud's TLS certificate")
    sub.add_parser("status", help="the running daemon's status, as JSON")
    sub.add_parser("check", help="self-check (firmware/self_check.py), as JSON; exit 1 when a required check fails")
    pin = sub.add_parser("pin", help="hand a PIN to the waiting authentication (as the panel does)")
    pin.add_argument("pin")
    sub.add_parser("pin-cancel", help="cancel PIN entry")
    sub.add_parser("clear-fault", help="operator: clear a latched fault (the purge is retried)")
    mem = sub.add_parser("memory", help="the daemon's object and thread counts; with PYTHONTRACEMALLOC, "
                                        "the allocation sites grown since the baseline")
    mem.add_argument("--baseline", action="store_true", help="record the baseline snapshot now")
    mem.add_argument("--compare", action="store_true", help="list the sites grown since the baseline")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = fwconfig.load(args.config, required=args.config != fwconfig.DEFAULT_PATH)
    except fwconfig.ConfigError as exc:
        print(f"tenantprint firmware: {exc}", file=sys.stderr)
        return 2
    if args.dump_config:
        print(json.dumps(cfg.as_dict(), indent=2))
        return 0
    if args.cmd == "run":
        from firmware.runtime import run_daemon

        return run_daemon(cfg)
    if args.cmd == "check":
        from firmware.self_check import run_checks

        report = run_checks(cfg)
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    if args.cmd == "enrol":
        from firmware.enrolment import enrol

        return enrol(cfg, args.cloud, args.token_file, args.ca_file)
    if args.cmd in ("status", "pin", "pin-cancel", "clear-fault", "memory"):
        from firmware.status import request

        req = {"cmd": args.cmd}
        if args.cmd == "pin":
            req["pin"] = args.pin
        if args.cmd == "memory":
            req["baseline"], req["compare"] = args.baseline, args.compare
        try:
            reply = request(cfg.runtime.status_socket, req)
        except OSError as exc:
            print(json.dumps({"error": f"firmware not reachable at {cfg.runtime.status_socket}: {exc.strerror}"}))
            return 1
        print(json.dumps(reply, indent=2))
        return 0 if "error" not in reply else 1
    _parser().print_help()
    return 2
