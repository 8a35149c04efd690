"""Benches for the scenarios, labgrid-style: the environment file says where the MFP is and what the
bench can do (`features`); the scenarios (test_scenarios.py) are the same for every bench, and one
that needs a feature the bench lacks skips with the reason.

- `LabBench` (`kind = "lab"`): the lab the suite builds itself. `mfp = "netns"`: the MFP is the
  lab's `office` network namespace on this machine's kernel (kernel-libipsec: no ESP here);
  `mfp = "vm"`: the MFP is a QEMU guest booted from the amd64 twin image, the firmware its shipped
  systemd service with kernel XFRM (`lab up --mfp vm`). Both run in CI, through the lab CLI.
- `SshBench` (`kind = "ssh"`): a real Raspberry Pi over SSH with a real reader and printer. No card
  actuator: the person at the bench is asked to tap. Its status comes from `tenantprint firmware
  status` there, its self-check from `tenantprint firmware check`.

Features (what a bench can do, beyond a firmware that answers):
  card-actuator   a card is presented without a person (the lab's virtual card)
  tunnel          the MFP reaches an org's gateway (an org's profile points at a reachable one)
  org-desk        a desk PC in the org's LAN the bench can print from
  print-record    the bench knows what the print engine printed (the lab's engine records it)
  gateway-fault   the bench can kill an org's gateway (the tunnel dies under the session)
  secret-scan     the bench can look for the orgs' canary secrets on the MFP
  self-check      `tenantprint firmware check` can be run on the MFP
  kernel-xfrm     the MFP's kernel does ESP: the tunnel must be kernel XFRM
  power-cut       the MFP's power can be cut (a hard reset) and it boots again
  watchdog        the firmware runs under systemd's watchdog (a hung daemon is restarted)
  clock-control   the bench can withhold and give network time
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

KNOWN_FEATURES = {"card-actuator", "tunnel", "org-desk", "print-record", "gateway-fault", "secret-scan",
                  "self-check", "kernel-xfrm", "power-cut", "watchdog", "clock-control"}
KEYS = {"kind", "prefix", "mfp", "host", "user", "org", "user_id", "features"}
TENANTPRINT = "/opt/tenantprint/venv/bin/tenantprint"


class BenchError(Exception):
    """The bench could not do what a scenario asked."""


class Bench:
    """What a scenario may ask of a bench. A method whose feature the bench lacks is not called."""
    features: set[str]
    org: str = "acme"
    user: str = "alice"

    def status(self) -> dict: ...
    def tap(self, org: str, user: str, pin: str | None = None) -> dict: ...
    def print_from_desk(self, org: str, user: str, path: str) -> dict: ...
    def printed(self) -> list[dict]: ...
    def fault(self, kind: str, org: str = "acme") -> dict: ...
    def scan_secrets(self) -> dict: ...
    def self_check(self) -> dict: ...
    def close(self) -> None: ...


class LabBench(Bench):
    def __init__(self, prefix: str, features: set[str], mfp: str = "netns"):
        self.prefix, self.features, self.mfp = prefix, features, mfp
        self._cli("down")  # a lab left by an interrupted run
        self._cli("up", *(["--mfp", mfp] if mfp != "netns" else []), timeout=1500)

    def _cli(self, *args: str, timeout: float = 300) -> dict:
        env = dict(os.environ, TP_LAB_PREFIX=self.prefix)
        proc = subprocess.run([sys.executable, "-m", "tenantprint", "lab", *args], capture_output=True, text=True,
                              env=env, timeout=timeout)
        try:
            out = json.loads(proc.stdout or "{}")
        except ValueError:
            out = {"error": proc.stdout[-500:]}
        if proc.returncode != 0:
            raise BenchError(f"lab {args[0]}: {out.get('error', proc.stderr[-500:])}")
        return out

    def lab_status(self) -> dict:
        return self._cli("status")

    def status(self) -> dict:
        return self.lab_status()["firmware"]

    def tap(self, org: str, user: str, pin: str | None = None) -> dict:
        return self._cli("tap", "--org", org, "--user", user, *(["--pin", pin] if pin else []))

    def print_from_desk(self, org: str, user: str, path: str) -> dict:
        return self._cli("print", "--org", org, "--user", user, "--from", "desk", path)

    def desk_queue(self, org: str) -> bool:
        return bool(self.lab_status()["desks"][org]["queue"])

    def printed(self) -> list[dict]:
        return self.lab_status()["printed"]

    def fault(self, kind: str, org: str = "acme") -> dict:
        return self._cli("fault", kind, "--org", org, timeout=600)

    def scan_secrets(self) -> dict:
        return self._cli("scan-secrets")

    def self_check(self) -> dict:
        return self._cli("self-check", timeout=180)["report"]

    def close(self) -> None:
        out = self._cli("down", timeout=600)
        if out["leftovers"] != {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}:
            raise BenchError(f"lab leftovers: {out['leftovers']}")


class SshBench(Bench):
    def __init__(self, host: str, user: str, features: set[str], org: str = "acme", user_id: str = "alice"):
        self.target, self.features, self.org, self.user = f"{user}@{host}", features, org, user_id

    def _ssh(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(["ssh", "-o", "BatchMode=yes", self.target, shlex.join(cmd)], capture_output=True,
                              text=True, timeout=120)
        if check and proc.returncode != 0:
            raise BenchError(f"ssh {self.target} {cmd[0]}: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def status(self) -> dict:
        return json.loads(self._ssh(TENANTPRINT, "firmware", "status"))

    def tap(self, org: str, user: str, pin: str | None = None) -> dict:
        input(f"\n>>> Tap the card of {user} ({org}) on the reader, then press Enter: ")
        if pin is not None:
            self._ssh(TENANTPRINT, "firmware", "pin", pin)
        return self.status()

    def self_check(self) -> dict:
        return json.loads(self._ssh(TENANTPRINT, "firmware", "check", check=False))

    def close(self) -> None:
        pass


def load(path: Path) -> Bench:
    data = tomllib.loads(path.read_text())
    if set(data) - {"bench"}:
        raise BenchError(f"{path}: unknown sections {sorted(set(data) - {'bench'})}")
    bench = data.get("bench", {})
    unknown = set(bench) - KEYS
    if unknown:
        raise BenchError(f"{path}: unknown keys {sorted(unknown)}")
    features = set(bench.get("features", []))
    if features - KNOWN_FEATURES:
        raise BenchError(f"{path}: unknown features {sorted(features - KNOWN_FEATURES)}")
    kind = bench.get("kind")
    if kind == "lab":
        mfp = bench.get("mfp", "netns")
        if mfp not in ("netns", "vm"):
            raise BenchError(f"{path}: bench.mfp must be netns or vm")
        return LabBench(bench.get("prefix", "tph"), features, mfp)
    if kind == "ssh":
        if "host" not in bench:
            raise BenchError(f"{path}: an ssh bench needs bench.host")
        return SshBench(bench["host"], bench.get("user", "root"), features, bench.get("org", "acme"),
                        bench.get("user_id", "alice"))
    raise BenchError(f"{path}: bench.kind must be lab or ssh")
