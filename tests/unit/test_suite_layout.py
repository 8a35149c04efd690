"""The suite's layout: test directories are not packages, so pytest imports
each test module by its basename, and two modules with one basename break
the whole run's collection (it happened: tests/lab and tests/unit each had a
test_clock.py)."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert {n: c for n, c in names.items() if c > 1} == {}
