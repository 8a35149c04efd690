"""`python -m bench.convert [--runs 10]`: converting a released PDF for an engine that does not take
PDF, on this machine (hal/printer/convert.py, confined as on the device): seconds per page.

- pwg300:  PWG raster, 300 dpi, 8-bit grey (what a pwg-only engine gets; the lab's)
- pwg600:  PWG raster, 600 dpi, 8-bit grey
- urf600:  URF, 600 dpi, 8-bit grey (the lab's urf-only engine says RS600 only)

The document: CUPS's own test pages, 10 pages (text, lines and a grey ramp). A Pi 4's Cortex-A72 is
some 3-5x slower per core than this machine's x86 core for Ghostscript's rendering: multiply.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from bench.stats import summary, table, write

DATA = Path("/usr/share/cups/data")
PAGES = ["default-testpage.pdf", "standard.pdf", "default.pdf", "classified.pdf", "confidential.pdf",
         "secret.pdf", "topsecret.pdf", "unclassified.pdf", "form_english.pdf", "form_russian.pdf"]


def run(runs: int) -> dict:
    from hal.printer.convert import rasterize
    from hal.printer.engine_state import Raster

    kinds = {"pwg300": Raster("image/pwg-raster", 300, False), "pwg600": Raster("image/pwg-raster", 600, False),
             "urf600": Raster("image/urf", 600, False)}
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        doc = Path(d) / "ten.pdf"
        subprocess.run(["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=pdfwrite", f"-sOutputFile={doc}",
                        *[str(DATA / p) for p in PAGES]], check=True, capture_output=True)
        for name, raster in kinds.items():
            per_page = []
            for _ in range(runs):
                t0 = time.monotonic()
                rasterize(doc, Path(d) / "out", raster)
                per_page.append((time.monotonic() - t0) / len(PAGES))
            out[f"{name}_per_page"] = summary(per_page)
            out[f"{name}_bytes_per_page"] = (Path(d) / "out").stat().st_size // len(PAGES)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.convert")
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args(argv)
    results = run(args.runs)
    print(table({k: v for k, v in results.items() if isinstance(v, dict)}))
    print({k: v for k, v in results.items() if not isinstance(v, dict)})
    print(f"-> {write('convert', results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
