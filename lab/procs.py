"""Processes the lab started, recorded by PID and stopped only by PID.

Each process gets a record `<procs_dir>/<key>.json` with its pid and its kernel start time, so a
recycled pid is never mistaken for ours. Nothing here looks processes up by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name in field 2 may contain spaces, so split after ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class ProcRecord:
    key: str
    pid: int
    start_time: int
    argv: list[str]
    log: str | None

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time and not _is_zombie(self.pid)


class Supervisor:
    def __init__(self, procs_dir: Path):
        self.dir = Path(procs_dir)

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def spawn(
        self,
        key: str,
        argv: list[str],
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin=subprocess.DEVNULL,
    ) -> ProcRecord:
        """Start `argv` in its own session, record it under `key`, return the record.

        An existing live process under the same key is an error: stop it first.
        """
        existing = self.get(key)
        if existing is not None and existing.alive():
            raise RuntimeError(f"lab process {key} is already running (pid {existing.pid})")
        self.dir.mkdir(parents=True, exist_ok=True)
        out = subprocess.DEVNULL
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")
        try:
            proc = subprocess.Popen(
                argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT if log else out,
                env=env, cwd=cwd, start_new_session=True,
            )
        finally:
            if log is not None:
                out.close()
        start = _start_time(proc.pid) or 0
        rec = ProcRecord(key, proc.pid, start, list(argv), str(log) if log else None)
        self._path(key).write_text(json.dumps(rec.__dict__))
        # The Popen object is dropped; reap the child in the background so it never lingers as
        # a zombie while this (possibly long-lived) process runs.
        _reapers.append(proc)
        return rec

    def get(self, key: str) -> ProcRecord | None:
        try:
            data = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return ProcRecord(**data)

    def records(self) -> list[ProcRecord]:
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("*.json")):
            rec = self.get(path.stem)
            if rec is not None:
                out.append(rec)
        return out

    def stop(self, key: str, timeout: float = 5.0) -> bool:
        """SIGTERM the recorded process (its whole session), SIGKILL after `timeout`.

        Returns True if a live process was stopped. The record is removed either way.
        """
        rec = self.get(key)
        stopped = False
        if rec is not None and rec.alive():
            stopped = True
            _signal(rec, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while rec.alive() and time.monotonic() < deadline:
                _reap()
                time.sleep(0.02)
            if rec.alive():
                _signal(rec, signal.SIGKILL)
                deadline = time.monotonic() + 2
                while rec.alive() and time.monotonic() < deadline:
                    _reap()
                    time.sleep(0.02)
        self._path(key).unlink(missing_ok=True)
        _reap()
        return stopped

    def kill(self, key: str, sig: int = signal.SIGKILL) -> bool:
        """Send `sig` to the recorded process only (a fault injection); keeps the record."""
        rec = self.get(key)
        if rec is None or not rec.alive():
            return False
        os.kill(rec.pid, sig)
        return True

    def stop_all(self) -> list[str]:
        stopped = []
        for rec in reversed(self.records()):
            if self.stop(rec.key):
                stopped.append(rec.key)
        return stopped


_reapers: list[subprocess.Popen] = []


def _reap() -> None:
    for proc in list(_reapers):
        if proc.poll() is not None:
            _reapers.remove(proc)


def _signal(rec: ProcRecord, sig: int) -> None:
    # The process leads its own session (start_new_session), so its pid is its process group:
    # signalling the group reaches the children it forked, and nothing else.
    try:
        if os.getpgid(rec.pid) == rec.pid:
            os.killpg(rec.pid, sig)
        else:
            os.kill(rec.pid, sig)
    except ProcessLookupError:
        pass
