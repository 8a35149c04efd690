"""firmware/diagnostics: the memory report the control socket gives."""

from __future__ import annotations

import tracemalloc

from firmware.diagnostics import MemoryDiagnostics


def test_counts_only_without_tracemalloc():
    assert not tracemalloc.is_tracing()
    r = MemoryDiagnostics().report()
    assert r["tracemalloc"] is False and r["gc_objects"] > 0 and r["threads"] >= 1
    assert "grown_since_baseline" not in r


def test_sites_grown_since_the_baseline():
    tracemalloc.start(4)
    try:
        diag = MemoryDiagnostics()
        assert diag.report(baseline=True)["baseline"] == "recorded"
        kept = [bytearray(1024) for _ in range(200)]  # ~200 KiB from this line
        assert "grown_since_baseline" not in diag.report()  # counts only unless asked
        grown = diag.report(compare=True)["grown_since_baseline"]
        here = [g for g in grown if g["where"].endswith("test_firmware_diagnostics.py:" + str(_line_of("kept = ")))]
        assert here and here[0]["kib"] >= 190 and here[0]["count"] >= 200, grown
        del kept
    finally:
        tracemalloc.stop()


def _line_of(text: str) -> int:
    lines = open(__file__).read().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip().startswith(text))

