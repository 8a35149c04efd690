"""Benches for the hardware-in-the-loop scenarios, labgrid-style: the environment file says where the
MFP is and what it has (`features`); the scenarios are the same for every bench.

- `LabBench`: the lab's `office` host (real daemons, virtual card behind pcscd): runs in CI.
- `SshBench`: a real Raspberry Pi over SSH with a real reader and printer. No card actuator: the
  person at the bench is asked to tap. Its status comes from `tenantprint firmware status` there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

KNOWN_FEATURES = {"card-actuator", "printer", "tunnel", "org-desk"}


class BenchError(Exception):
    """The bench could not do what a scenario asked."""


class Bench:
    features: set[str]

    def status(self) -> dict: ...

    def tap(self, org: str, user: str, pin: str | None = None) -> dict: ...

    def close(self) -> None: ...


class LabBench(Bench):
    def __init__(self, prefix: str, features: set[str]):
        self.prefix, self.features = prefix, features
        self._cli("up")

    def _cli(self, *args: str) -> dict:
        env = dict(os.environ, TP_LAB_PREFIX=self.prefix)
        proc = subprocess.run([sys.executable, "-m", "tenantprint", "lab", *args], capture_output=True, text=True,
                              env=env, timeout=300)
        out = json.loads(proc.stdout or "{}")
        if proc.returncode != 0:
            raise BenchError(f"lab {args[0]}: {out.get('error', proc.stderr[-500:])}")
        return out

    def status(self) -> dict:
        return self._cli("status")["firmware"]

    def tap(self, org: str, user: str, pin: str | None = None) -> dict:
        return self._cli("tap", "--org", org, "--user", user, *(["--pin", pin] if pin else []))

    def close(self) -> None:
        out = self._cli("down")
        if out["leftovers"] != {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}:
            raise BenchError(f"lab leftovers: {out['leftovers']}")


class SshBench(Bench):
    def __init__(self, host: str, user: str, features: set[str]):
        self.target, self.features = f"{user}@{host}", features

    def _ssh(self, *cmd: str) -> str:
        proc = subprocess.run(["ssh", "-o", "BatchMode=yes", self.target, *cmd], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise BenchError(f"ssh {self.target} {cmd[0]}: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def status(self) -> dict:
        return json.loads(self._ssh("/opt/tenantprint/venv/bin/tenantprint", "firmware", "status"))

    def tap(self, org: str, user: str, pin: str | None = None) -> dict:
        input(f"\n>>> Tap the card of {user} ({org}) on the reader, then press Enter: ")
        if pin is not None:
            self._ssh("/opt/tenantprint/venv/bin/tenantprint", "firmware", "pin", pin)
        return self.status()

    def close(self) -> None:
        pass


def load(path: Path) -> Bench:
    data = tomllib.loads(path.read_text())
    bench = data.get("bench", {})
    unknown = set(bench) - {"kind", "prefix", "host", "user", "org", "user_id", "features"}
    if unknown:
        raise BenchError(f"{path}: unknown keys {sorted(unknown)}")
    features = set(bench.get("features", []))
    if features - KNOWN_FEATURES:
        raise BenchError(f"{path}: unknown features {sorted(features - KNOWN_FEATURES)}")
    if bench.get("kind") == "lab":
        return LabBench(bench.get("prefix", "tph"), features)
    if bench.get("kind") == "ssh":
        return SshBench(bench["host"], bench.get("user", "root"), features)
    raise BenchError(f"{path}: bench.kind must be lab or ssh")
