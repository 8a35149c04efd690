"""Waiting for something observable to become true, with a bound: the lab's, the benchmarks' and the
tests' one way to wait (never a bare sleep and hope)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from lab.host import LabError

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `pred` until it returns something truthy, and return that; LabError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
