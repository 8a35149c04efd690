"""`python -m bench.against --ref REF [--rounds 3] [--runs 20] [--busy-core]`: bench.session on this
tree and on an earlier commit `REF`, on the same machine, in alternating rounds (base, this, base,
this, ...), so that both meet the same load. It answers "is a tap still as fast as it was before
this change?" (issue 14: within 10 % of the code before sessions had sandboxes, 45d3cf3).

`REF` and this tree's HEAD are each checked out into a git worktree under /var/tmp (removed after):
both sides run from fresh checkouts alike (an A/A run of HEAD against itself with this tree's own
directory as one side read 0.91 on the queue path: the working directory, with its build leftovers,
was the faster side). What is not committed is not measured. Both trees run with the same
Python environment; each tree's lab runs that tree's code (PYTHONPATH, carried into the lab's hosts
by `lab.host.host_env`; an older tree whose host_env does not carry it gets that one line added in
its worktree). Lab prefix `tpbs`, as bench.session's.

Per round: each tree's medians of card event -> desk queue and card event -> document (and their
parts). Reported: every round, the median over rounds per tree, and this tree's / the base's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.stats import write

REPO = Path(__file__).resolve().parents[1]
KEYS = ("card_event_to_desk_queue", "card_event_to_document", "queue.lookup", "queue.ike", "queue.desk_queue",
        "doc.auth", "doc.release")
_CARRY = '''    if os.environ.get("PYTHONPATH"):  # the lab runs the caller's code tree (bench.against)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
'''


def _worktree(ref: str) -> Path:
    where = Path(tempfile.mkdtemp(prefix="tp-bench-against-", dir="/var/tmp"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref], check=True,
                   capture_output=True)
    host = where / "lab" / "host.py"
    text = host.read_text()
    if "PYTHONPATH" not in text:  # an older tree: its lab would run the installed (this) tree's code
        marker = "    env.update(extra or {})\n"
        if marker not in text:
            raise SystemExit(f"{ref}: lab/host.py has no host_env to carry PYTHONPATH in")
        text = text.replace(marker, marker + _CARRY, 1)
        if "\nimport os\n" not in text:
            text = text.replace("\nimport subprocess\n", "\nimport os\nimport subprocess\n", 1)
        host.write_text(text)
    return where


def _session(tree: Path, runs: int, busy: bool) -> dict:
    argv = [sys.executable, "-m", "bench.session", "--runs", str(runs), "--primitive-runs", "5"]
    if busy:
        argv.append("--busy-core")
    env = {**os.environ, "PYTHONPATH": str(tree), "TP_LAB_PREFIX": "tpbs"}
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.session in {tree} failed: {proc.stderr[-1500:]}")
    name = "session-busy.json" if busy else "session.json"
    res = json.loads((tree / "bench" / "results" / name).read_text())
    return {k: res["paths"][k]["median_ms"] for k in KEYS if k in res["paths"]} | \
        {"ratios": res.get("ratios", {})}


def run(ref: str, rounds: int, runs: int, busy: bool) -> dict:
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        print("bench.against: uncommitted changes are not measured (this = HEAD)", file=sys.stderr)
    trees = {"base": _worktree(ref), "this": _worktree("HEAD")}
    out: dict = {"ref": ref, "this": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                    capture_output=True, text=True).stdout.strip(),
                 "rounds": [], "runs_per_round": runs, "busy_core": busy}
    try:
        for i in range(rounds):
            got = {}
            for which in ("base", "this") if i % 2 == 0 else ("this", "base"):
                got[which] = _session(trees[which], runs, busy)
                print(f"round {i + 1} {which}: " + ", ".join(f"{k} {got[which][k]}" for k in KEYS[:2]), flush=True)
            out["rounds"].append(got)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
            shutil.rmtree(tree, ignore_errors=True)
    out["median_of_rounds_ms"] = {w: {k: round(statistics.median(r[w][k] for r in out["rounds"]), 2) for k in KEYS}
                                  for w in ("base", "this")}
    m = out["median_of_rounds_ms"]
    out["this_over_base"] = {k: round(m["this"][k] / m["base"][k], 2) for k in KEYS[:2]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.against")
    p.add_argument("--ref", required=True, help="the earlier commit to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=20, help="bench.session runs per tree per round")
    p.add_argument("--busy-core", action="store_true")
    args = p.parse_args(argv)
    res = run(args.ref, args.rounds, args.runs, args.busy_core)
    for w in ("base", "this"):
        print(f"{w:5} median of rounds: " + ", ".join(f"{k} {v}" for k, v in res["median_of_rounds_ms"][w].items()))
    for k, v in res["this_over_base"].items():
        print(f"this / base {k}: {v}")
    print(f"-> {write('against-' + args.ref[:7] + ('-busy' if args.busy_core else ''), res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
