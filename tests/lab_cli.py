"""The `tenantprint lab` CLI as the scenario suites drive it (tests/lab, tests/vm, the attacks):
one call, its JSON answer, asserted to have succeeded. Each suite names its own lab prefix."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_lab_cli(prefix: str, *args: str, timeout: float = 180) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tenantprint", "lab", *args], capture_output=True, text=True,
                          env=dict(os.environ, TP_LAB_PREFIX=prefix), timeout=timeout)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"lab {args}: not JSON (exit {proc.returncode}): {proc.stdout[-500:]} "
                             f"{proc.stderr[-2000:]}") from None
    assert proc.returncode == 0, f"lab {args}: {out}"
    return out
