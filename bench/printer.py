"""`python -m bench.printer [--runs 20]`: the session print service on real cupsd + ippeveprinter.

- release:  the firmware's release (`PrintEngine.take_held`: the document into the engine spool, the
            job purged from the session cupsd, one Print-Job to the engine) -> the document
            recorded by the engine (ippeveprinter's print command)
- held:     a job submitted from another host (cowork) -> listed as held by `held_jobs()`
- start:    `SessionPrintService.start()` (cupsd up, the queue made, verified stopped)

Lab prefix `TP_LAB_PREFIX` (default `tpbp`); the lab is brought up and down by the benchmark.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

from bench.stats import summary, table, write
from lab.poll import wait_for

DOC = "/usr/share/cups/data/default-testpage.pdf"
MFP = "10.77.0.10:631"


def run(runs: int) -> dict:
    os.environ.setdefault("TP_LAB_PREFIX", "tpbp")
    from hal.printer.cupsd import SessionPrintService
    from lab.lab import Lab
    from lab.services.engine import EngineService, engine_uri, printed_documents, serving_engine

    lab = Lab(services=[EngineService()])
    lab.up()
    starts, held, release = [], [], []
    engine, stop = serving_engine(lab, lab.layout.data_dir("bench-printer-spool"))
    try:
        for i in range(max(3, runs // 4)):
            d = lab.layout.data_dir(f"bench-printer-{i}")
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            t0 = time.monotonic()
            ps = SessionPrintService(d, [MFP], engine_uri(lab), command_prefix=lab.host("office").argv([]))
            ps.start()
            starts.append(time.monotonic() - t0)
            try:
                for j in range(4 if i < max(3, runs // 4) - 1 else runs - 4 * i):
                    n_held = len(ps.held_jobs())
                    t0 = time.monotonic()
                    lab.host("cowork").run(["lp", "-h", MFP, "-d", "tenantprint", "-U", "alice", "-t",
                                            f"bench-{i}-{j}", DOC])
                    jobs = wait_for(lambda: len(ps.held_jobs()) > n_held and ps.held_jobs(), 10, "the held job", 0.001)
                    held.append(time.monotonic() - t0)
                    n = len(printed_documents(lab))
                    t0 = time.monotonic()
                    engine.take_held(ps, jobs[-1].id, session=i, org="bench", user="alice", title=jobs[-1].title,
                                     document_format=jobs[-1].document_format)
                    wait_for(lambda: len(printed_documents(lab)) > n, 10, "the document at the engine", 0.001)
                    release.append(time.monotonic() - t0)
            finally:
                ps.stop()
    finally:
        stop.set()
        lab.down()
    return {"release_to_engine": summary(release), "submit_to_held": summary(held),
            "print_service_start": summary(starts)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.printer")
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    results = run(args.runs)
    print(table(results))
    print(f"-> {write('printer', results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
