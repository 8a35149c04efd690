"""`make bench` / `python -m bench [--quick]`: every benchmark, each on its own lab, results in
bench/results/*.json. `--quick` runs fewer repetitions (a smoke run, not numbers to quote)."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = [
    ("card", ["--runs", "20"], ["--runs", "5"]),
    ("printer", ["--runs", "20"], ["--runs", "5"]),
    ("panel", ["--runs", "20"], ["--runs", "5"]),
    ("convert", ["--runs", "10"], ["--runs", "2"]),
    ("tunnel", [], ["--runs", "5", "--kill-runs", "1"]),
    ("session", ["--runs", "20"], ["--runs", "3", "--primitive-runs", "3"]),
    ("session", ["--runs", "20", "--busy-core"], ["--runs", "3", "--primitive-runs", "3", "--busy-core"]),
    ("session", ["--runs", "20", "--wan-rtt-ms", "40"], ["--runs", "2", "--primitive-runs", "2", "--wan-rtt-ms", "40"]),
    ("session", ["--runs", "10", "--primitive-runs", "10", "--wan-rtt-ms", "150"],
     ["--runs", "2", "--primitive-runs", "2", "--wan-rtt-ms", "150"]),
    # issue 14's bar: a tap as fast as before sessions had sandboxes (45d3cf3), same machine, alternating
    # rounds; many short rounds: two labs of the same code differ by up to 15 % (an A/A run), runs of one lab less
    ("against", ["--ref", "45d3cf3", "--rounds", "6", "--runs", "10"], ["--ref", "45d3cf3", "--rounds", "1", "--runs", "3"]),
    ("against", ["--ref", "45d3cf3", "--rounds", "4", "--runs", "10", "--busy-core"],
     ["--ref", "45d3cf3", "--rounds", "1", "--runs", "3", "--busy-core"]),
    # issue 18's bar: certificate mode (device certificate, RadSec, SUN card proofs) within 10 % of the
    # PSK mode of the code before it (4ebd1f1)
    ("against", ["--ref", "4ebd1f1", "--rounds", "4", "--runs", "10"], ["--ref", "4ebd1f1", "--rounds", "1", "--runs", "3"]),
    ("session", ["--runs", "10", "--trust", "psk"], ["--runs", "2", "--primitive-runs", "2", "--trust", "psk"]),
    # issue 17: the same paths on the MFP as a QEMU/TCG guest of the twin image, as ratios to the primitives
    # measured inside that guest (TCG's absolute times are the emulator's); 3 at least: under TCG the first
    # session after boot and each primitive's first sample are several times the rest, a median of 2 keeps them
    ("session_vm", ["--runs", "5", "--primitive-runs", "5"], ["--runs", "3", "--primitive-runs", "3"]),
    ("firmware_footprint", ["--sessions", "100", "--idle-s", "20"], ["--sessions", "5", "--idle-s", "3"]),
    ("sessions_many", ["--runs", "10", "--sessions", "100"], ["--runs", "2", "--sessions", "10"]),
    ("cloud_lookup", [], ["--orgs", "2000", "--seconds", "3", "--workers", "1", "--backends", "sqlite"]),
    ("cloud_lookup", ["--devices", "200", "--clients", "4", "--orgs", "20000", "--workers", "1,2", "--backends", "sqlite",
                      "--out", "bench/results/cloud_lookup_200_devices.json"],
     ["--devices", "200", "--clients", "4", "--orgs", "2000", "--seconds", "3", "--workers", "1",
      "--backends", "sqlite", "--out", "bench/results/cloud_lookup_200_devices.json"]),
    ("plot", [], []),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", action="append", help="run only these benchmarks (repeatable)")
    args = p.parse_args(argv)
    failed = []
    for name, full, quick in BENCHES:
        if args.only and name not in args.only:
            continue
        print(f"\n### bench.{name} {' '.join(quick if args.quick else full)}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            rc = module.main(quick if args.quick else full)
        except SystemExit as exc:
            rc = exc.code
        except Exception as exc:  # one benchmark failing does not hide the others' numbers
            print(f"bench.{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            rc = 1
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
