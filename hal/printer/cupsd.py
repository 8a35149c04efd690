"""The session cupsd: configuration, process, queues — all inside one directory (the session tmpfs).

    <session_dir>/
      cupsd.conf, cups-files.conf     generated here
      cupsd.pid                       our record of the process (stopped by this pid only)
      cups.sock                       the local socket the firmware uses (root, peer credentials)
      etc/ spool/ spool/tmp/ cache/ state/ log/

The directory is owned by the cups user `lp`, mode 0700, so cupsd's filters and backends (which run
as lp) can reach their temporary files while nobody else on the device can.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import cups

from hal.printer import (INBOUND_QUEUE, RELEASE_QUEUE, ConfigError, EngineUnavailable, PrintServiceDown)
from hal.printer.ipp import IppError, first, get_printers
from hal.printer.jobs import JobOps

CUPSD = "/usr/sbin/cupsd"
PID_FILE = "cupsd.pid"
SOCKET = "cups.sock"

# Operations a remote desk PC may do: submit, and read printer/job status (the desk's ipp backend
# polls its job). Everything else — moving, releasing, holding, cancelling, queue control — needs
# the firmware: root over the local socket.
REMOTE_OPS = ("Create-Job Print-Job Send-Document Validate-Job Get-Printer-Attributes "
              "Get-Job-Attributes CUPS-Get-Default CUPS-Get-Printers Close-Job")


def _cupsd_conf(session_dir: Path, listen: list[str]) -> str:
    lines = [
        "LogLevel warn",
        "MaxLogSize 0",
        "HostNameLookups Off",
        "Browsing Off",
        "BrowseLocalProtocols none",
        "WebInterface No",
        "DefaultShared Yes",
        "PreserveJobHistory No",
        "PreserveJobFiles No",
        "MaxJobs 1000",
        "JobRetryLimit 0",
        "Timeout 30",
        f"Listen {session_dir / SOCKET}",
        *(f"Listen {addr}" for addr in listen),
        "<Location />",
        "  Order allow,deny",
        "  Allow all",
        "</Location>",
        "<Location /admin>",
        "  Order allow,deny",
        "</Location>",
        "<Policy default>",
        "  JobPrivateAccess default",
        "  JobPrivateValues default",
        "  SubscriptionPrivateAccess default",
        "  SubscriptionPrivateValues default",
        f"  <Limit {REMOTE_OPS}>",
        "    Order allow,deny",
        "    Allow all",
        "  </Limit>",
        "  <Limit All>",
        "    AuthType Default",
        "    Require user @SYSTEM",
        "    Order deny,allow",
        "  </Limit>",
        "</Policy>",
        "DefaultPolicy default",
        "DefaultAuthType Basic",
    ]
    return "\n".join(lines) + "\n"


def _cups_files_conf(d: Path) -> str:
    return "\n".join([
        "User lp",
        "Group lp",
        "SystemGroup root",
        f"ServerRoot {d / 'etc'}",
        f"RequestRoot {d / 'spool'}",
        f"TempDir {d / 'spool' / 'tmp'}",
        f"CacheDir {d / 'cache'}",
        f"StateDir {d / 'state'}",
        f"ErrorLog {d / 'log' / 'error_log'}",
        f"AccessLog {d / 'log' / 'access_log'}",
        f"PageLog {d / 'log' / 'page_log'}",
        f"Printcap {d / 'etc' / 'printcap'}",
        "FileDevice No",
        "Sandboxing Relaxed",
    ]) + "\n"


def _check_listen(listen: list[str]) -> None:
    for addr in listen:
        host, _, port = addr.rpartition(":")
        try:
            ipaddress.ip_address(host)
            if not 0 < int(port) < 65536:
                raise ValueError
        except ValueError:
            raise ConfigError(f"listen address must be IP:port, got {addr!r}") from None


class SessionPrintService(JobOps):
    """The session's cupsd. `start()` configures and runs it; `stop()` stops it by pid.

    `command_prefix` is put in front of the cupsd command line: the lab passes
    the office host's namespace wrapper; on a device it is empty.
    """

    def __init__(self, session_dir: str | Path, listen: list[str], engine_uri: str,
                 command_prefix: tuple[str, ...] | list[str] = (), start_timeout: float = 10.0):
        _check_listen(listen)
        self.dir = Path(session_dir)
        self.listen = list(listen)
        self.engine_uri = engine_uri
        self.prefix = list(command_prefix)
        self.start_timeout = start_timeout
        super().__init__(self.dir / SOCKET)

    # -- process ---------------------------------------------------------------------------------

    def _prepare(self) -> None:
        lp = pwd.getpwnam("lp")
        if not self.dir.is_dir():
            raise ConfigError(f"session directory {self.dir} does not exist")
        os.chown(self.dir, lp.pw_uid, lp.pw_gid)
        os.chmod(self.dir, 0o700)
        for sub, mode in (("etc", 0o755), ("etc/ppd", 0o755), ("spool", 0o710), ("spool/tmp", 0o1770),
                          ("cache", 0o770), ("state", 0o755), ("state/certs", 0o711), ("log", 0o755)):
            p = self.dir / sub
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, mode)
            os.chown(p, 0, lp.pw_gid)
        (self.dir / "cupsd.conf").write_text(_cupsd_conf(self.dir, self.listen))
        (self.dir / "cups-files.conf").write_text(_cups_files_conf(self.dir))
        (self.dir / "etc" / "cupsd.conf").write_text(_cupsd_conf(self.dir, self.listen))

    def start(self) -> None:
        """Run cupsd, wait until it answers, create the two queues. Idempotent if running."""
        if self.running():
            return
        self._prepare()
        argv = [*self.prefix, CUPSD, "-f", "-c", str(self.dir / "cupsd.conf"), "-s",
                str(self.dir / "cups-files.conf")]
        # Its own session: a signal to the firmware's process group never reaches it; the purge
        # stops it explicitly.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self._proc = proc
        (self.dir / PID_FILE).write_text(str(proc.pid))
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                raise PrintServiceDown(f"cupsd exited at start (status {proc.returncode}); "
                                       f"see {self.dir / 'log' / 'error_log'}")
            try:
                get_printers("ipp://localhost/", [], connect_timeout=1.0, unix_socket=str(self.socket_path))
                break
            except (IppError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise PrintServiceDown(f"cupsd did not answer within {self.start_timeout:g} s") from None
                time.sleep(0.002)
        log = self.dir / "log" / "error_log"
        if log.exists() and "Unable to open listen socket" in log.read_text(errors="replace"):
            self.stop()
            raise PrintServiceDown(f"cupsd could not listen on {', '.join(self.listen)} (address in use or absent)")
        try:
            self._create_queues()
        except Exception:
            self.stop()
            raise

    def _create_queues(self) -> None:
        """Over the local socket (IPP as root), no lpadmin processes: the release queue is raw, so
        documents reach the engine unchanged; the inbound queue takes its capabilities from the
        engine (IPP Everywhere), so desk PCs send what the engine prints, and is shared by the
        cupsd.conf default. The inbound queue gets no Enable: CUPS-Accept-Jobs on a new queue marks
        it available (idle), which would let jobs print unreleased, so it is stopped after."""
        conn = self.connection()
        try:
            conn.addPrinter(RELEASE_QUEUE, device=_no_wait(self.engine_uri))
            conn.setPrinterShared(RELEASE_QUEUE, False)
            conn.enablePrinter(RELEASE_QUEUE)
            conn.acceptJobs(RELEASE_QUEUE)
            conn.addPrinter(INBOUND_QUEUE, device=self.engine_uri, ppdname="everywhere")
            self._await_model()
            conn.acceptJobs(INBOUND_QUEUE)
        except cups.IPPError as exc:
            raise EngineUnavailable(f"creating the session queues: {exc}") from None
        self._settle_stopped()

    def _await_model(self, timeout: float = 10.0) -> None:
        """Wait until cupsd has built the inbound queue's model from the engine.

        Adding a queue with the `everywhere` model returns before the model exists; cupsd builds it in the background
        (a few ms here) and then sets the queue idle, undoing any pause made before. So the pause
        comes after this."""
        deadline = time.monotonic() + timeout
        while True:
            model = first(self.queue_attributes(INBOUND_QUEUE, ["printer-make-and-model"]), "printer-make-and-model", "")
            if model_built(model):
                return
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"cupsd built no model from the engine within {timeout:g} s (got {model!r})")
            time.sleep(0.005)

    def _settle_stopped(self, stable_s: float = 0.01, timeout: float = 5.0) -> None:
        """Stop the inbound queue and see it stay stopped for `stable_s`.

        Defence in depth: the model is built (see `_await_model`), so nothing in cupsd should set
        the queue idle again; if something does, pause again and watch again."""
        deadline = time.monotonic() + timeout
        stopped_since = None
        while time.monotonic() < deadline:
            if self.ensure_inbound_stopped():
                stopped_since = stopped_since or time.monotonic()
                if time.monotonic() - stopped_since >= stable_s:
                    return
            else:
                stopped_since = None
            time.sleep(0.002)
        raise PrintServiceDown("the inbound queue does not stay stopped")

    def pid(self) -> int | None:
        try:
            return int((self.dir / PID_FILE).read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and _is_cupsd(pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our cupsd (by its recorded pid), SIGKILL after `timeout`; verify it is gone."""
        stop_pid(self.pid(), timeout)
        proc = getattr(self, "_proc", None)
        if proc is not None:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        (self.dir / PID_FILE).unlink(missing_ok=True)
        if self.running():
            raise PrintServiceDown("cupsd is still running after stop")


_NO_MODEL = ("", "Local Raw Printer", "Remote Printer", "Unknown")


def model_built(model: str) -> bool:
    """Whether a queue's printer-make-and-model shows that CUPS built a model from the printer
    (`lpadmin -m everywhere` leaves a "Local Raw Printer" until it has, or for good when it cannot)."""
    return model not in _NO_MODEL


def _no_wait(uri: str) -> str:
    """For an IPP engine: do not keep the release queue busy until the engine reports the job done
    (the ipp backend polls for that, costing up to a second between released jobs)."""
    if uri.startswith(("ipp://", "ipps://")) and "?" not in uri:
        return uri + "?waitjob=false"
    return uri


def _is_cupsd(pid: int) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return exe == CUPSD and state != "Z"


def stop_pid(pid: int | None, timeout: float = 10.0) -> None:
    if pid is None or not _is_cupsd(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_cupsd(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _is_cupsd(pid):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while _is_cupsd(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def stop_stale(session_dir: str | Path) -> None:
    """Stop a session cupsd left by a crashed firmware (found through its pid file)."""
    path = Path(session_dir) / PID_FILE
    try:
        pid = int(path.read_text())
    except (OSError, ValueError):
        return
    stop_pid(pid)
    path.unlink(missing_ok=True)


def stale_leftovers(session_dir: str | Path) -> list[str]:
    path = Path(session_dir) / PID_FILE
    try:
        pid = int(path.read_text())
    except (OSError, ValueError):
        return []
    return [f"session cupsd pid {pid}"] if _is_cupsd(pid) else []
