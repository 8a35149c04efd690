"""One session's charon, running inside its sandbox (`hal.sandbox`).

`SandboxCharon(sandbox, backend, tpm=...)` writes a strongswan.conf (`hal.tunnel.charon_conf`, no secret in
it) into the sandbox's run_dir and starts `/usr/lib/ipsec/charon` there through `sandbox.argv`:
inside, /run is the run_dir, so charon's hardcoded /run/charon.pid and its VICI socket
/run/charon.vici are the sandbox's own, and the device drives it at `vici_socket`
(`<run_dir>/charon.vici`, e.g. `ViciTunnel(backend, vici_socket=str(charon.vici_socket))`). Its log
(stderr, the conf's level 1: no key material, no PSK) goes to `<run_dir>/charon.log`, inside the
sandbox's tmpfs, gone with it. With `tpm` (the device's `hal.tpm.TpmConfig`, when its key store
is the TPM) charon loads its `tpm` plugin with that TCTI: the sandbox sees the device's /dev (the
Pi's /dev/tpmrm0) and its files outside /run and /tmp (the lab's broker's bus, whose address goes
into charon's environment). The backend is `libipsec` where the kernel has no ESP (the TUN device
`ipsec0` appears in the sandbox) and `kernel` on the Pi (XFRM state in the sandbox's netns).

Measured here (tests/integration/test_sandbox.py and test_sandbox_in_lab.py, `-s`; kernel-libipsec,
x86-64 VM): `start()` returns when VICI answers, 10-25 ms after it was called (median 13 ms; the
sandbox's create before it 65-170 ms); idle RSS ~9.0 MiB, ~10.2 MiB with one tunnel up. A spare
sandbox built and its charon started ahead of a tap take ~80-190 ms off the tap's path.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from hal.sandbox import SandboxError
from hal.tunnel import BACKENDS, CharonUnavailable
from hal.tunnel.charon_conf import strongswan_conf

CHARON = "/usr/lib/ipsec/charon"
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "STRONGSWAN_CONF": "/run/strongswan.conf"}


class CharonStartFailed(CharonUnavailable):
    """charon did not start in the sandbox (it exited, or its VICI socket never answered); what was
    started is stopped again. The message names the sandbox and the log."""


class SandboxCharon:
    """charon in `sandbox` (a `hal.sandbox.SessionSandbox` that has been created). One owner drives it."""

    def __init__(self, sandbox, backend: str, *, start_timeout_s: float = 15.0, charon: str = CHARON, tpm=None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
        self.sandbox, self.backend, self.tpm = sandbox, backend, tpm
        self.start_timeout_s, self.charon = start_timeout_s, charon
        run_dir = Path(sandbox.run_dir)
        self.vici_socket = run_dir / "charon.vici"  # as the device sees it
        self.conf_path, self.log_path = run_dir / "strongswan.conf", run_dir / "charon.log"
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"SandboxCharon({self.sandbox.name!r}, {self.backend!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start charon and wait until its VICI socket answers (idempotent while it runs). Raises
        CharonStartFailed after stopping what it started."""
        if self.alive():
            return
        self._proc = None
        name = self.sandbox.name
        try:
            argv = self.sandbox.argv([self.charon])
            for stale in (self.vici_socket, self.vici_socket.with_name("charon.pid")):  # an earlier charon's
                stale.unlink(missing_ok=True)
            self.conf_path.write_text(strongswan_conf(self.backend, vici_socket="/run/charon.vici", tpm=self.tpm))
            with open(self.log_path, "ab") as log:
                env = {**_ENV, **(self.tpm.charon_env() if self.tpm is not None else {})}
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                              env=env, cwd="/", start_new_session=True)
        except (SandboxError, OSError) as exc:
            raise CharonStartFailed(f"charon in sandbox {name}: cannot start: {exc}") from None
        deadline = time.monotonic() + self.start_timeout_s
        while not self._answers():
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise CharonStartFailed(f"charon in sandbox {name} exited at start (status {code}; "
                                        f"log: {self.log_path}{self._last_log_line()})")
            if time.monotonic() > deadline:
                problems = self.stop()
                raise CharonStartFailed(f"charon in sandbox {name}: VICI socket {self.vici_socket} did not answer "
                                        f"within {self.start_timeout_s:g} s (log: {self.log_path})"
                                        + (f"; stopping it: {'; '.join(problems)}" if problems else ""))
            time.sleep(0.005)

    def _answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            try:
                s.connect(str(self.vici_socket))
                return True
            except OSError:
                return False

    def _last_log_line(self) -> str:
        """`: <the log's last line>` (at start charon holds nothing of an org: config errors only)."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f": {lines[-1][-200:]}" if lines else ""

    def stop(self, timeout: float = 3.0) -> list[str]:
        """SIGTERM, then SIGKILL after `timeout`, by its own pid (our child, not yet reaped); removes
        what a killed charon leaves in /run. Returns what went wrong (empty: it is gone)."""
        proc, problems = self._proc, []
        if proc is None:
            return []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"charon pid {proc.pid} ignored SIGTERM for {timeout:g} s: killed")
                proc.kill()
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    return problems + [f"charon pid {proc.pid} survived SIGKILL"]
        self._proc = None
        for leftover in (self.vici_socket, self.vici_socket.with_name("charon.pid")):
            leftover.unlink(missing_ok=True)
        return problems

    def rss_kib(self) -> int | None:
        """charon's resident memory now (KiB), None when it is not running."""
        if not self.alive():
            return None
        try:
            with open(f"/proc/{self._proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None
