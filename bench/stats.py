"""Summaries the benchmarks share: median, p90, max (milliseconds), and where results go."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def summary(seconds: list[float]) -> dict:
    xs = sorted(seconds)
    if not xs:
        return {"n": 0}
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return {"n": len(xs), "median_ms": round(statistics.median(xs) * 1000, 2), "p90_ms": round(p90 * 1000, 2),
            "min_ms": round(xs[0] * 1000, 2), "max_ms": round(xs[-1] * 1000, 2)}


def write(name: str, results: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": platform.node(), "python": platform.python_version(), **results},
                               indent=2))
    return path


def table(results: dict[str, dict]) -> str:
    lines = [f"{'measure':44} {'n':>4} {'median ms':>10} {'p90 ms':>9} {'max ms':>9}"]
    for name, s in results.items():
        if isinstance(s, dict) and "median_ms" in s:
            lines.append(f"{name:44} {s['n']:>4} {s['median_ms']:>10} {s['p90_ms']:>9} {s['max_ms']:>9}")
    return "\n".join(lines)
