"""A printer that needs a driver (a USB GDI/PCL laser): a cupsd of the device's own, one queue.

Driverless printers are the engine themselves (`engine.py` talks IPP to them). A printer that only
speaks its maker's language needs CUPS: its PPD (`printer.driver`, e.g.
`drv:///brlaser.drv/br2300.ppd` from printer-driver-brlaser) and its backend (`printer.engine_uri`,
e.g. `usb://Brother/HL-L2300D%20series?serial=...`, the `usb` backend of the `cups` package). This
module runs that cupsd: device data only, in `run_dir` (root's, on /run), listening on a unix socket
and nothing else (no network at all: the system cupsd stays masked, it would take localhost:631 from
the sessions), its queue `engine` enabled and accepting. The print engine (`engine.py`) sends the
released documents to that queue over the socket and follows them there like any IPP printer; cupsd
converts with the driver and the backend reports the printer's state (`offline-report`, media
reasons) as the queue's `printer-state-reasons`.

A finished job leaves no history here: the engine purges it the moment it saw how it ended
(Cancel-Job with purge-job; `PreserveJobFiles No`), so nothing of it stays on the device's side of
the printer.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import cups

from hal.printer import ConfigError, PrintServiceDown
from hal.printer.cupsd import cups_files_conf, make_dirs
from hal.printer.ipp import IppError, get_printers
from hal.printer.jobs import JobOps

log = logging.getLogger("tenantprint.hal.printer.driver")

CUPSD = "/usr/sbin/cupsd"
QUEUE = "engine"
SOCKET = "cups.sock"
PID_FILE = "cupsd.pid"


def _cupsd_conf(run_dir: Path) -> str:
    # Only the socket: the firmware (root) is the one client; nothing listens on the network.
    return "\n".join([
        "LogLevel warn",
        "MaxLogSize 0",
        "HostNameLookups Off",
        "Browsing Off",
        "BrowseLocalProtocols none",
        "WebInterface No",
        "DefaultShared No",
        # long enough for the engine to see how a job ended (with No it just vanishes, and a vanished
        # job looks lost: sent again); then the engine purges it (Cancel-Job, purge-job)
        "PreserveJobHistory 300",
        "PreserveJobFiles No",
        "MaxJobs 200",
        "JobRetryLimit 0",
        f"Listen {run_dir / SOCKET}",
        "<Location />",
        "  Order allow,deny",
        "  Allow localhost",
        "</Location>",
        "<Location /admin>",
        "  Order allow,deny",
        "  Allow localhost",
        "</Location>",
        "<Policy default>",
        "  <Limit All>",
        "    Order deny,allow",
        "  </Limit>",
        "</Policy>",
        "DefaultPolicy default",
        "DefaultAuthType None",
    ]) + "\n"


def check_driver(driver: str) -> str:
    """A CUPS model name (`drv:///...`, a PPD path under /usr/share/ppd, `lsb/...`), or "" for none."""
    if driver and not (driver.startswith(("drv:///", "lsb/", "/usr/share/ppd/", "/usr/share/cups/model/"))
                       and " " not in driver and ".." not in driver):
        raise ValueError("driver must be a CUPS model name (drv:///..., lsb/..., or a PPD under "
                         "/usr/share/ppd or /usr/share/cups/model): `lpinfo -m` lists them")
    return driver


class DriverQueue(JobOps):
    """The device's cupsd for a driver printer; `uri` and `socket_path` are what the engine uses."""

    def __init__(self, run_dir: str | Path, device_uri: str, driver: str, *,
                 command_prefix: tuple[str, ...] | list[str] = (), file_device: bool = False,
                 server_bin: str | None = None, start_timeout: float = 15.0):
        self.dir = Path(run_dir)
        self.device_uri, self.driver = device_uri, check_driver(driver)
        if not driver:
            raise ConfigError("a driver printer needs printer.driver")
        # Its own empty network namespace (root: util-linux's unshare): the driver's filters parse
        # what an org's desk sent, like the converter, and the usb backend and the unix socket
        # need no network.
        isolate = ["/usr/bin/unshare", "--net", "--"] if os.geteuid() == 0 else []
        self.prefix = [*command_prefix, *isolate]
        self.file_device, self.start_timeout = file_device, start_timeout
        self._next_try, self._backoff = 0.0, 1.0
        self.server_bin = server_bin  # tests: CUPS's programs with a backend of their own standing in for usb
        self._proc: subprocess.Popen | None = None
        super().__init__(self.dir / SOCKET)

    @property
    def uri(self) -> str:
        return f"ipp://localhost/printers/{QUEUE}"

    def _prepare(self) -> None:
        lp = pwd.getpwnam("lp")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.dir, 0, lp.pw_gid)
        os.chmod(self.dir, 0o710)
        make_dirs(self.dir, lp.pw_gid)
        for conf in (self.dir / "cupsd.conf", self.dir / "etc" / "cupsd.conf"):
            conf.write_text(_cupsd_conf(self.dir))
        (self.dir / "cups-files.conf").write_text(
            cups_files_conf(self.dir, file_device=self.file_device, server_bin=self.server_bin))

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Run the cupsd and set up its queue (idempotent while it runs). PrintServiceDown when it
        cannot run, ConfigError when CUPS refuses the driver or the device URI."""
        if self.running():
            return
        self._prepare()
        argv = [*self.prefix, CUPSD, "-f", "-c", str(self.dir / "cupsd.conf"), "-s", str(self.dir / "cups-files.conf")]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        (self.dir / PID_FILE).write_text(str(self._proc.pid))
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise PrintServiceDown(f"the driver cupsd exited at start; see {self.dir / 'log' / 'error_log'}")
            try:
                get_printers("ipp://localhost/", [], connect_timeout=1.0, unix_socket=str(self.socket_path))
                break
            except (IppError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise PrintServiceDown(f"the driver cupsd did not answer within {self.start_timeout:g} s") from None
                time.sleep(0.01)
        try:
            conn = self.connection()
            if self.driver.startswith("/"):  # a PPD file: given to cupsd whole
                conn.addPrinter(QUEUE, device=self.device_uri, filename=self.driver, info="the device's printer")
            else:  # a model name: cupsd has cups-driverd make it (the `cups` package, in the image)
                conn.addPrinter(QUEUE, device=self.device_uri, ppdname=self.driver, info="the device's printer")
            conn.enablePrinter(QUEUE)
            conn.acceptJobs(QUEUE)
        except cups.IPPError as exc:
            self.stop()
            raise ConfigError(f"the driver printer could not be set up ({exc.args[-1] if exc.args else exc})") from None

    def ensure(self) -> None:
        """Started, or started again after it stopped (the engine calls this before each look):
        a failed start is retried with backoff up to a minute, and journalled once per failure."""
        if self.running() or time.monotonic() < self._next_try:
            return
        try:
            self.start()
            self._backoff = 1.0
        except (PrintServiceDown, ConfigError, OSError) as exc:
            log.warning("driver printer not set up: %s (retried in %.0f s)", exc, self._backoff)
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 60.0)

    def model(self) -> bytes | None:
        """The queue's PPD (what the sessions' inbound queue shows desks), once set up."""
        try:
            return (self.dir / "etc" / "ppd" / f"{QUEUE}.ppd").read_bytes()
        except OSError:
            return None

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        (self.dir / PID_FILE).unlink(missing_ok=True)
