"""The MFP's firmware daemon on the `office` host, configured as a real device would be.

`FirmwareService.start` writes the device's config (`firmware.toml`), enrols the device with the
lab's cloud the way first boot does (`tenantprint firmware enrol` with a one-time token, the key made
on the office host), sets the office host's kernel network settings as the device's unit does
(`hal/net/sysctls.py`), starts `tenantprint firmware run` there and waits until the boot purge is done
and the daemon is idle. `stop` sends SIGTERM (the daemon purges the session and exits). With
`lab up --tpm` the MFP has a TPM 2.0 (`lab/services/swtpm.py`, started first and stopped last by
this service): the config's `device.key_store` is `tpm`, its TCTI the lab TPM's. Its control
socket is reached from the root namespace through the office host's /run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from firmware import status as fw_status
from hal.net import sysctls
from lab.host import LabError
from lab.orgs import DEVICE_ID

HOST = "office"
SOCKET = "/run/tenantprint/firmware.sock"
PANEL_SOCKET = "/run/tenantprint/panel.sock"
PANEL_LISTEN = "127.0.0.1:8650"  # the web panel, on the MFP host's loopback only
PANEL_GROUP = "nogroup"          # the unprivileged panel service runs as nobody:nogroup
KEYPAD_FIFO = "/run/tenantprint-keypad.fifo"  # the USB keypad's stand-in: recorded input_events
SESSION_DIR = "/run/tenantprint/session"
# What systemd-timesyncd leaves once it synchronised the clock (hal/clock): the office host's clock
# is this machine's, so the lab plays the NTP client; `set_network_time(lab, False)` takes it away.
SYNC_FLAG = "/run/systemd/timesync/synchronized"
REPO = Path(__file__).resolve().parents[2]


def _toml(data: dict) -> str:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    return "\n".join(lines)


def control_socket(lab) -> Path:
    return lab.host(HOST).path(SOCKET)


def firmware_status(lab, timeout: float = 5.0) -> dict:
    """The daemon's status document (raises OSError when it is not running)."""
    return fw_status.request(control_socket(lab), {"cmd": "status"}, timeout=timeout)


def firmware_request(lab, request: dict) -> dict:
    return fw_status.request(control_socket(lab), request)


def set_network_time(lab, synced: bool) -> None:
    """Network time for the MFP comes (or stops coming, for the next firmware start: a clock once
    synchronised stays so until a reboot): the office's timesyncd flag made or removed."""
    flag = lab.host(HOST).path(SYNC_FLAG)
    blocked = lab.layout.data_dir("firmware") / "ntp-blocked"
    if synced:
        blocked.unlink(missing_ok=True)
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
    else:
        blocked.parent.mkdir(parents=True, exist_ok=True)
        blocked.touch()
        flag.unlink(missing_ok=True)


RESTING = ("idle", "ready", "awaiting_pin", "fault", "stopped")


def wait_resting(lab, alive, gone: str, what: str, timeout: float, want: tuple[str, ...] = (),
                 status_timeout: float = 2, poll_s: float = 0.05) -> dict:
    """Poll the MFP's status socket until its state is resting (or one of `want`) and return the
    status; LabError with `gone` once `alive()` says the MFP is gone, or after `timeout`."""
    resting = want or RESTING
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        if not alive():
            raise LabError(gone)
        try:
            last = firmware_status(lab, timeout=status_timeout)
            if last.get("state") in resting:
                return last
        except (OSError, ValueError):
            pass
        time.sleep(poll_s)
    raise LabError(f"{what} did not settle in {timeout:g} s (state {last.get('state')!r})")


def check_answer(rc: int, stdout: bytes, stderr: bytes) -> dict:
    try:
        report = json.loads(stdout)
    except ValueError:
        raise LabError(f"firmware check: no JSON (exit {rc}): {stderr.decode(errors='replace')[-500:]}") from None
    return {"exit": rc, "report": report}


def type_on_keypad(lab, keys: bytes) -> None:
    """The key events of the MFP's USB keypad typing `keys` (digits, b"\\n" ENTER, b"\\x1b" Esc),
    written to its FIFO (hal/panel/keypad.py reads them as from /dev/input)."""
    from hal.panel.keypad import keypad_events

    fd = os.open(lab.host(HOST).path(KEYPAD_FIFO), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, keypad_events(keys, time.time(), gap_s=0.01))
    finally:
        os.close(fd)


def panel_socket(lab) -> Path:
    return lab.host(HOST).path(PANEL_SOCKET)


def panel_request(lab, request: dict, timeout: float = 5.0) -> dict:
    """One request on the firmware's panel socket (firmware/panel_api.py), as the panel makes it."""
    return fw_status.request(panel_socket(lab), request, timeout=timeout)


class FirmwareService:
    name = "firmware"

    def __init__(self, backend: str = "auto"):
        self.backend = backend
        self.env: dict[str, str] = {}  # extra environment of the daemon (a benchmark's PYTHONTRACEMALLOC)

    def data_dir(self, lab) -> Path:
        d = lab.layout.data_dir("firmware")
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        return d

    def config_path(self, lab) -> Path:
        return self.data_dir(lab) / "firmware.toml"

    def write_config(self, lab) -> Path:
        from lab.services import card_readers, cloud, engine

        state = self.data_dir(lab) / "state"
        state.mkdir(exist_ok=True)
        device: dict = {"state_dir": str(state)}
        if self.tpm(lab) is not None:
            tpm = self.tpm(lab).config(lab)
            device.update(key_store="tpm", tpm_tcti=tpm.tcti, tpm_dbus=tpm.dbus_address)
        conf = {
            "device": device,
            "cloud": {"timeout_s": 5.0},
            # the PC/SC reader (vpcd), an nfcpy reader (the udp simulator) and a wedge reader (a FIFO)
            "card": {"kind": "pcsc,nfcpy,wedge", "nfc_path": f"udp:127.0.0.1:{card_readers.NFC_PORT}",
                     "wedge_device": card_readers.WEDGE_FIFO},
            "tunnel": {"backend": self.backend},
            "session": {"tmpfs_dir": SESSION_DIR, "tmpfs_size_mb": 64, "ipp_port": 631},
            "sessions": {"max": 4},
            "printer": {"engine_uri": engine.engine_uri(lab)},
            "runtime": {"status_socket": SOCKET},
            "panel": {"kind": "web,keypad", "socket": PANEL_SOCKET, "socket_group": PANEL_GROUP,
                      "listen": PANEL_LISTEN, "keypad_device": KEYPAD_FIFO},
        }
        path = self.config_path(lab)
        path.write_text(_toml(conf))
        self._enrol(lab, state, cloud)
        return path

    def _enrol(self, lab, state: Path, cloud) -> None:
        if (state / "enrolment.json").exists():
            return
        token_file = self.data_dir(lab) / "enrol-token"
        token_file.write_text(cloud.enrol_token(lab, DEVICE_ID))
        token_file.chmod(0o600)
        try:
            proc = lab.host(HOST).run(
                [sys.executable, "-m", "tenantprint", "firmware", "--config", str(self.config_path(lab)),
                 "enrol", "--cloud", cloud.url(lab), "--token-file", str(token_file),
                 "--ca-file", str(cloud.ca_file(lab))], check=False, timeout=60)
        finally:
            token_file.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise LabError(f"firmware enrol failed: {proc.stderr.decode(errors='replace').strip()}")

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    @staticmethod
    def tpm(lab):
        """The MFP's TPM service when the lab has one (`lab up --tpm`), else None."""
        if not getattr(lab.options, "tpm", False):
            return None
        from lab.services.swtpm import SwtpmService

        return SwtpmService("office")

    def start(self, lab) -> None:
        if self.running(lab):
            return
        if self.tpm(lab) is not None:
            self.tpm(lab).start(lab)  # before the config names it and enrolment makes nothing yet
        config = self.write_config(lab)
        from lab.services.card_readers import make_fifo

        make_fifo(lab.host(HOST).path(KEYPAD_FIFO))  # made before the daemon opens it (as the wedge's)
        # What the device's unit does before the daemon starts (ExecStartPre, systemd/sysctl.d)
        sysctls.apply(lab.host(HOST).ns)
        if not (self.data_dir(lab) / "ntp-blocked").exists():
            set_network_time(lab, True)
        lab.spawn(self.name, HOST, [sys.executable, "-m", "tenantprint", "firmware", "--config", str(config), "run"],
                  cwd=REPO, env=dict(self.env))
        self.wait_settled(lab, timeout=60, want=("idle", "fault"))

    def wait_settled(self, lab, timeout: float = 30, want: tuple[str, ...] = ()) -> dict:
        """Wait until the daemon is in a resting state (or one of `want`); return its status."""
        return wait_resting(lab, lambda: self.running(lab), f"firmware exited (log: {lab.layout.logs_dir / 'firmware.log'})",
                            "firmware", timeout, want, status_timeout=2, poll_s=0.05)

    def stop(self, lab) -> None:
        lab.procs.stop(self.name, timeout=30)
        if self.tpm(lab) is not None:
            self.tpm(lab).stop(lab)

    def kill(self, lab) -> bool:
        """SIGKILL the daemon (a crash): its session is left behind for the next start to purge."""
        return lab.procs.kill(self.name)

    def self_check(self, lab) -> dict:
        """`tenantprint firmware check` with the lab's config, on the MFP's host: {"exit", "report"}."""
        cmd = [sys.executable, "-m", "tenantprint", "firmware", "--config", str(self.config_path(lab)), "check"]
        proc = lab.host(HOST).run(cmd, check=False, timeout=60)
        return check_answer(proc.returncode, proc.stdout, proc.stderr)

    def network_time(self, lab, synced: bool) -> dict:
        """`lab fault ntp-block`: the MFP starts again without network time (a clock once
        synchronised stays so until a reboot, so the firmware is restarted with the flag gone);
        `ntp-unblock`: network time arrives, and the running firmware sees it by itself."""
        set_network_time(lab, synced)
        if synced:
            return {"restarted": False}
        self.stop(lab)
        self.start(lab)
        return {"restarted": True}

    def status(self, lab) -> dict:
        tpm = {"tpm": self.tpm(lab).status(lab)} if self.tpm(lab) is not None else {}
        if not self.running(lab):
            return {"running": False, **tpm}
        try:
            return {"running": True, **firmware_status(lab), **tpm}
        except (OSError, ValueError) as exc:
            return {"running": True, "error": f"status socket: {exc}"}
