"""Benchmarks: `python -m bench.<part>`; each prints its numbers and writes bench/results/<part>.json."""
