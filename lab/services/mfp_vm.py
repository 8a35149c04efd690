"""The MFP as a virtual machine (`lab up --mfp vm`): a QEMU guest booted from the amd64 twin image,
running the firmware as the image's own systemd service, with the kernel tunnel backend (XFRM).

Why each part is as it is:

- **The image**: the twin that `provisioning/image/build-image --target twin` makes from the same
  recipe as the Raspberry Pi image, plus the lab layer (`provisioning/image/lab-layer/`: the virtual
  reader, an sshd drop-in, the office-LAN address; nothing of it in the Pi image). It is built once
  and reused by content (`--cache`); `TP_TWIN_DIR` names a built one instead. Each lab's disks
  are its own (below), kept across the guest's reboots and power cuts, gone at `lab down`.
- **TCG**, never KVM: `/dev/kvm` here cannot run a stock Debian kernel (it hangs instead of failing).
  Direct kernel boot (the image's vmlinuz and initrd) skips a boot loader.
- **The network**: the guest takes the MFP's address on the office LAN (10.77.0.10, by DHCP). `office` keeps
  what stands in for the device's hardware and its LAN neighbours: a bridge `br-mfp` (10.77.0.9)
  joins its eth0 (the office LAN) and the guest's tap device; the print engine (ippeveprinter) and
  the virtual card (`lab.vcard`) run there. QEMU runs on `office`, so its tap is made there and
  nothing is added to the root namespace.
- **Identity arrives as on a device**: a small disk is the guest's boot partition (FAT, label
  RASPIFIRM, made with mkfs.vfat and mcopy, no loop device) holding what an operator copies there
  (`tenantprint/token`, `cloud-url`, `ca.pem`): the image's first-boot unit enrols with the one-time
  token and deletes it. The lab's own file is in `tenantprint-lab/` (the lab's ssh key), read by the
  lab layer's unit only. The site's settings (the engine on the LAN, the lab's
  management address) are the lab layer's firmware.toml: the image's root is read-only, as a
  device's. The guest's other disks: a qcow2 overlay of the image's root (it stays as built) and
  a copy of its state partition (device key, enrolment, ssh host keys), kept across reboots.
- **How the lab talks to the guest: ssh**, the path an operator and the real-Pi bench
  (tests/hil/hil_bench.py `SshBench`) use, through the device firewall's own `[firewall]
  management` rule (the office host's address). One ControlMaster connection per lab (process
  `mfp-ssh`, on office) carries every command, and forwards: the firmware's control and panel
  sockets to the office host's /run (so `lab.services.firmware.firmware_status` and `panel_request`
  work unchanged) and vpcd's port to office's loopback (so `lab.vcard` connects to the guest's
  pcscd as it does to office's; vpcd listens on every interface, and the device firewall drops it
  from the LAN, as it must). qemu-guest-agent would need a second channel a Pi does not have.
- **The engine** is a network printer for the guest (`[printer] engine_uri` = ippeveprinter on
  office over the LAN): the lab's `printed` list is unchanged, and the device's own network-printer
  path is what runs.
- **Faults**: `mfp-power-cut` is QMP `system_reset` (the disk keeps what was written, RAM is
  gone); `firmware-hang` SIGSTOPs the firmware's main process, and the unit's `WatchdogSec=` must
  restart it (its restart purges what the stopped daemon held); `firmware-kill` SIGKILLs it, and
  systemd restarts it (`Restart=on-failure`), as on a device; `ntp-block` stops the office LAN's
  NTP server and power-cycles the guest, which then boots without network time.
- **The guest's network is the image's own**: systemd-networkd's DHCP on every ethernet port, from
  office's dnsmasq (lab/services/dhcp.py: the MFP's address for the guest's MAC, the router, the
  NTP server). **Network time is real**: the guest's systemd-timesyncd asks the NTP server DHCP
  named (office, lab/services/ntp.py), and the lab is up only once the firmware says the clock is
  synchronised.

The service has the interface of `lab.services.firmware.FirmwareService` (`name` "firmware",
`start`, `stop`, `kill`, `status`, `running`, `wait_settled`), so the lab and its CLI use either.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from lab.host import LabError, sh
from lab.topology import MFP_ADDRESS, MFP_BRIDGE

HOST = "office"
TAP = "tap-mfp"
MAC = "52:54:00:77:00:10"
QEMU = "qemu-system-x86_64"
MEMORY_MB = 1024
GUEST_SOCKETS = ("/run/tenantprint/firmware.sock", "/run/tenantprint/panel.sock")
FIRMWARE_UNIT = "tenantprint-firmware.service"
GUEST_TENANTPRINT = "/opt/tenantprint/venv/bin/tenantprint"
ENROLMENT = "/var/lib/tenantprint/enrolment.json"
REPO = Path(__file__).resolve().parents[2]
LAB_LAYER = REPO / "provisioning" / "image" / "lab-layer"
BUILD_IMAGE = REPO / "provisioning" / "image" / "build-image"
IMAGE_FILES = ("vmlinuz", "initrd.img", "root.img")
BOOT_S = 300  # TCG: ~25 s to multi-user measured alone; a loaded 2-core machine takes several times that


def twin_build_argv() -> list[str]:
    """build-image's command line for the lab's twin (its answer is one JSON line on stdout)."""
    cache = ["--cache", os.environ["TP_IMAGE_CACHE"]] if os.environ.get("TP_IMAGE_CACHE") else []
    return [str(BUILD_IMAGE), "--target", "twin", "--layer", str(LAB_LAYER), *cache]


def twin_image(timeout: float = 1800) -> dict:
    """The amd64 twin with the lab layer: {"dir", "key", "cached"}. `TP_TWIN_DIR` names a built one;
    otherwise build-image builds it, or finds it in its content-keyed cache (build-image's own
    default, shared with `make image-check`; `TP_IMAGE_CACHE` names another)."""
    if os.environ.get("TP_TWIN_DIR"):
        d = Path(os.environ["TP_TWIN_DIR"])
        out = {"dir": str(d), "key": None, "cached": True}
    else:
        if not BUILD_IMAGE.exists():
            raise LabError(f"no twin image: {BUILD_IMAGE} is missing and TP_TWIN_DIR is not set")
        proc = sh(twin_build_argv(), timeout=timeout)
        try:
            out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise LabError(f"build-image: no JSON answer: {proc.stdout.decode()[-300:]}") from None
        d = Path(out["dir"])
    missing = [f for f in IMAGE_FILES if not (d / f).is_file()]
    if missing:
        raise LabError(f"twin image {d}: missing {', '.join(missing)}")
    return out


class MfpVmService:
    """The MFP guest: QEMU (`mfp-vm`) and the lab's ssh connection to it (`mfp-ssh`), both on office."""

    name = "firmware"

    def data_dir(self, lab) -> Path:
        d = lab.layout.data_dir("mfp-vm")
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        return d

    # -- files --------------------------------------------------------------------------------

    def _key(self, lab) -> Path:
        key = self.data_dir(lab) / "id_ed25519"
        if not key.exists():
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"tenantprint-lab-{lab.layout.prefix}",
                "-f", str(key)])
        return key

    def _boot_disk(self, lab) -> Path:
        """The guest's boot partition, made once per lab: the operator's enrolment files and the lab's."""
        from lab.orgs import DEVICE_ID
        from lab.services import cloud

        d = self.data_dir(lab)
        img = d / "boot.img"
        if img.exists():
            return img
        files = d / "boot"
        shutil.rmtree(files, ignore_errors=True)
        (files / "tenantprint").mkdir(parents=True)
        (files / "tenantprint-lab").mkdir()
        (files / "tenantprint" / "token").write_text(cloud.enrol_token(lab, DEVICE_ID) + "\n")
        (files / "tenantprint" / "cloud-url").write_text(cloud.url(lab) + "\n")
        shutil.copy(cloud.ca_file(lab), files / "tenantprint" / "ca.pem")
        shutil.copy(self._key(lab).with_suffix(".pub"), files / "tenantprint-lab" / "authorized_keys")
        tmp = img.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        sh(["mkfs.vfat", "-C", "-n", "RASPIFIRM", str(tmp), "32768"])
        sh(["mcopy", "-s", "-i", str(tmp), str(files / "tenantprint"), str(files / "tenantprint-lab"), "::"])
        shutil.rmtree(files)  # the token lives on the disk only, as on a device's card
        tmp.replace(img)
        return img

    def _disks(self, lab, image: dict) -> list[Path]:
        """The device's disks, made once per lab: a qcow2 overlay of the image's root.img (the root
        is read-only: the overlay stays as built) and a copy of its state.img (the state partition:
        the device key, enrolment, ssh host keys), when the image has one."""
        d = self.data_dir(lab)
        root, state = d / "root.qcow2", d / "state.img"
        if not root.exists():
            sh(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(Path(image["dir"]) / "root.img"),
                str(root)])
            if (Path(image["dir"]) / "state.img").exists():
                shutil.copy(Path(image["dir"]) / "state.img", state)
            (d / "image.json").write_text(json.dumps(image))
        return [root, state] if state.exists() else [root]

    def disks(self, lab) -> list[Path]:
        """What the guest writes to and keeps across its reboots (scanned by `lab scan-secrets`)."""
        d = self.data_dir(lab)
        return [p for p in (d / "root.qcow2", d / "state.img", d / "boot.img") if p.exists()]

    @staticmethod
    def cmdline(image: dict) -> str:
        """The kernel command line: the image's own (manifest.json), TP_MFP_CMDLINE to debug a boot."""
        if os.environ.get("TP_MFP_CMDLINE"):
            return os.environ["TP_MFP_CMDLINE"]
        try:
            return json.loads((Path(image["dir"]) / "manifest.json").read_text())["cmdline"]
        except (OSError, ValueError, KeyError):
            return "root=/dev/vda ro console=ttyS0"

    def _tap(self, lab) -> None:
        office = lab.host(HOST)
        if office.run(["ip", "link", "show", TAP], check=False).returncode != 0:
            office.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap"])
        office.run(["ip", "link", "set", TAP, "master", MFP_BRIDGE])
        office.run(["ip", "link", "set", TAP, "up"])

    # -- processes ------------------------------------------------------------------------------

    def running(self, lab) -> bool:
        rec = lab.procs.get("mfp-vm")
        return bool(rec and rec.alive())

    def start(self, lab) -> None:
        """Boot the guest (idempotent) and wait until its firmware is at rest; with the guest
        running, start the firmware's unit (after a `firmware-kill` systemd restarts it anyway)."""
        if self.running(lab):
            self._connect(lab)
            self.guest(lab, ["systemctl", "start", "--no-block", FIRMWARE_UNIT])
            self.wait_settled(lab, timeout=120, want=("idle", "fault"))
            return
        image = self.image(lab)
        disks, boot = self._disks(lab, image), self._boot_disk(lab)
        self._tap(lab)
        d = Path(image["dir"])
        self.data_dir(lab).joinpath("qmp.sock").unlink(missing_ok=True)
        lab.spawn("mfp-vm", HOST, [
            QEMU, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", str(MEMORY_MB),
            "-name", f"tenantprint-mfp-{lab.layout.prefix}",
            "-kernel", str(d / "vmlinuz"), "-initrd", str(d / "initrd.img"),
            "-append", self.cmdline(image),
            *[a for disk in disks for a in ("-drive", f"file={disk},if=virtio,format={_format(disk)}")],
            "-drive", f"file={boot},if=virtio,format=raw",
            "-device", "qemu-xhci",  # a USB bus, as the Pi has (the reader setup unbinds NFC drivers there)
            "-netdev", f"tap,id=lan,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=lan,mac={MAC}",
            "-rtc", "base=utc", "-display", "none", "-no-user-config", "-nodefaults",
            "-serial", f"file:{lab.layout.logs_dir / 'mfp-console.log'}",
            "-qmp", f"unix:{self.data_dir(lab) / 'qmp.sock'},server=on,wait=off",
        ])
        self._boot(lab)

    def image(self, lab) -> dict:
        """The image this lab boots: the one its disk was made from, else the current twin."""
        recorded = self.data_dir(lab) / "image.json"
        if recorded.exists():
            return json.loads(recorded.read_text())
        return twin_image()

    def _boot(self, lab, timeout: float = BOOT_S) -> None:
        t0 = time.monotonic()
        self._connect(lab, timeout=timeout)
        booted = time.monotonic() - t0
        self._wait_enrolled(lab, timeout=max(60.0, timeout - booted))
        self.wait_settled(lab, timeout=max(60.0, timeout - (time.monotonic() - t0)), want=("idle", "fault"))
        self._wait_clock(lab, timeout=max(60.0, timeout - (time.monotonic() - t0)))
        (self.data_dir(lab) / "boot.json").write_text(json.dumps(
            {"ssh_s": round(booted, 1), "settled_s": round(time.monotonic() - t0, 1), "at": time.time()}))

    def _wait_clock(self, lab, timeout: float) -> None:
        """Unless NTP is blocked: the guest's timesyncd has synchronised from the office's server and
        the firmware says so (until then every tap is refused, "clock not synchronised")."""
        from lab.services.firmware import firmware_status
        from lab.services.ntp import NtpService

        if NtpService().blocked(lab):
            return
        deadline = time.monotonic() + timeout
        while not firmware_status(lab, timeout=5).get("clock", {}).get("synchronised"):
            if time.monotonic() > deadline:
                sync = self.guest(lab, ["timedatectl", "timesync-status"], check=False).stdout.decode()[-600:]
                raise LabError(f"the guest's clock is not synchronised after {timeout:g} s: {sync}")
            time.sleep(0.5)

    def _wait_enrolled(self, lab, timeout: float) -> None:
        """First boot: the image's enrolment unit has enrolled with the boot disk's token (an
        unenrolled firmware also comes to rest, and would fail every tap)."""
        deadline = time.monotonic() + timeout
        while self.guest(lab, ["test", "-s", ENROLMENT], check=False, timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                journal = self.guest(lab, ["journalctl", "-b", "-u", "tenantprint-enrol", "-n", "5", "-o", "cat",
                                           "--no-pager"], check=False).stdout.decode(errors="replace")
                raise LabError(f"the MFP guest did not enrol within {timeout:g} s: {journal.strip()[-400:]}")
            time.sleep(2)

    def _ssh_base(self, lab) -> list[str]:
        d = self.data_dir(lab)
        return ["ssh", "-i", str(self._key(lab)), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "StrictHostKeyChecking=accept-new",
                "-o", "ConnectTimeout=3", "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR", "-S", str(d / "ssh.ctl")]

    def _master_up(self, lab) -> bool:
        rec = lab.procs.get("mfp-ssh")
        if not (rec and rec.alive()):
            return False
        return sh(self._ssh_base(lab) + ["-O", "check", f"root@{MFP_ADDRESS}"], check=False).returncode == 0

    def _connect(self, lab, timeout: float = 60) -> None:
        """The lab's ssh connection to the guest (with its forwards), made again when it is gone
        (a guest reset drops it)."""
        if self._master_up(lab):
            return
        lab.procs.stop("mfp-ssh", timeout=2)
        office = lab.host(HOST)
        for inside in GUEST_SOCKETS:
            office.path(inside).parent.mkdir(parents=True, exist_ok=True)
        from lab.services.pcscd import VPCD_PORT

        # the master runs on office: a local socket path is office's /run, where the lab looks
        forwards = [f"-L{p}:{p}" for p in GUEST_SOCKETS] + [f"-L127.0.0.1:{VPCD_PORT}:127.0.0.1:{VPCD_PORT}"]
        deadline = time.monotonic() + timeout
        while True:
            if not self.running(lab):
                raise LabError(f"the MFP guest exited (console: {lab.layout.logs_dir / 'mfp-console.log'})")
            probe = office.run(self._ssh_base(lab) + ["-o", "ControlMaster=no", f"root@{MFP_ADDRESS}", "true"],
                               check=False, timeout=15)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise LabError(f"the MFP guest's ssh did not answer within {timeout:g} s: "
                               f"{probe.stderr.decode(errors='replace').strip()[-200:]}")
            time.sleep(1)
        lab.spawn("mfp-ssh", HOST, self._ssh_base(lab) + [
            "-M", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes", *forwards,
            f"root@{MFP_ADDRESS}"])
        end = time.monotonic() + 15
        while not self._master_up(lab):
            if time.monotonic() > end:
                raise LabError(f"mfp-ssh: no connection (log {lab.layout.logs_dir / 'mfp-ssh.log'})")
            time.sleep(0.1)

    def guest(self, lab, argv: list[str], *, input: bytes | None = None, timeout: float = 60,
              check: bool = True) -> subprocess.CompletedProcess:
        """Run `argv` as root in the guest over the lab's ssh connection (argv is a shell command line
        there: quote it). No secret belongs in it: argv is visible to every process."""
        return sh(self.guest_argv(lab, argv), input=input, timeout=timeout, check=check)

    def guest_argv(self, lab, argv: list[str]) -> list[str]:
        """The ssh command line running `argv` as root in the guest over the lab's connection (for a
        process kept running, e.g. through a pipe; `guest` runs one to its end)."""
        from shlex import join

        return self._ssh_base(lab) + ["-o", "ControlMaster=no", f"root@{MFP_ADDRESS}", join(argv)]

    def wait_settled(self, lab, timeout: float = 30, want: tuple[str, ...] = ()) -> dict:
        """Wait until the guest's firmware is in a resting state (or one of `want`); return its status."""
        from lab.services.firmware import wait_resting

        return wait_resting(lab, lambda: self.running(lab),
                            f"the MFP guest exited (console: {lab.layout.logs_dir / 'mfp-console.log'})",
                            "the guest's firmware", timeout, want, status_timeout=5, poll_s=0.2)

    def stop(self, lab) -> None:
        """Power the guest off (QEMU stopped: the lab is going away) and remove its tap."""
        lab.procs.stop("mfp-ssh", timeout=2)
        lab.procs.stop("mfp-vm", timeout=10)
        lab.host(HOST).run(["ip", "link", "del", TAP], check=False) if lab.host(HOST).exists() else None

    # -- faults ---------------------------------------------------------------------------------

    def main_pid(self, lab) -> int:
        out = self.guest(lab, ["systemctl", "show", "-p", "MainPID", "--value", FIRMWARE_UNIT]).stdout
        return int(out.decode().strip() or 0)

    def kill(self, lab) -> bool:
        """SIGKILL the firmware's main process (a crash); systemd restarts it (Restart=on-failure)."""
        if not self.running(lab) or not self.main_pid(lab):
            return False
        self.guest(lab, ["systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", FIRMWARE_UNIT])
        return True

    def hang(self, lab) -> dict:
        """The daemon stops answering: SIGSTOP its main process. The unit's watchdog must notice."""
        pid = self.main_pid(lab)
        if not pid:
            raise LabError("the guest's firmware is not running")
        self.guest(lab, ["systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", FIRMWARE_UNIT])
        return {"stopped_pid": pid, "watchdog_s": self.watchdog_s(lab)}

    def self_check(self, lab) -> dict:
        """The image's firmware self-check in the guest (`tenantprint firmware check`)."""
        from lab.services.firmware import check_answer

        proc = self.guest(lab, [GUEST_TENANTPRINT, "firmware", "check"], check=False, timeout=120)
        return check_answer(proc.returncode, proc.stdout, proc.stderr)

    def network_time(self, lab, synced: bool) -> dict:
        """Real network time: the guest's systemd-timesyncd asks the office's NTP server
        (lab/services/ntp.py). `ntp-block` stops that server and power-cycles the guest (a clock
        once synchronised stays so until a reboot): it boots without network time. `ntp-unblock`
        starts the server again; timesyncd finds it at its next try (within its 30 s retry)."""
        from lab.services.ntp import NtpService

        ntp = NtpService()
        ntp.block(lab, not synced)
        if synced:
            return {"rebooted": False}
        return {"rebooted": True, **self.power_cut(lab)}

    def watchdog_s(self, lab) -> float:
        usec = self.guest(lab, ["systemctl", "show", "-p", "WatchdogUSec", "--value", FIRMWARE_UNIT]).stdout
        text = usec.decode().strip()
        return _seconds(text)

    def power_cut(self, lab, wait: bool = True) -> dict:
        """A hard reset of the guest (QMP system_reset): RAM gone, the disk as written. With `wait`,
        returns once the rebooted firmware is at rest."""
        t0 = time.monotonic()
        qmp(self.data_dir(lab) / "qmp.sock", "system_reset")
        lab.procs.stop("mfp-ssh", timeout=2)
        out: dict = {"reset": True}
        if wait:
            self._boot(lab)
            out["back_s"] = round(time.monotonic() - t0, 1)
        return out

    def restarts(self, lab) -> int:
        """How many times systemd restarted the firmware's unit (NRestarts) since the guest booted."""
        out = self.guest(lab, ["systemctl", "show", "-p", "NRestarts", "--value", FIRMWARE_UNIT]).stdout
        return int(out.decode().strip() or 0)

    # -- status -------------------------------------------------------------------------------

    def mfp_view(self, lab) -> dict:
        """`lab status` -> `mfp`: where the MFP runs and how it booted."""
        rec = lab.procs.get("mfp-vm")
        d = self.data_dir(lab)
        view = {"kind": "vm", "address": MFP_ADDRESS, "running": self.running(lab), "pid": rec.pid if rec else None,
                "accel": "tcg", "memory_mb": MEMORY_MB, "console": str(lab.layout.logs_dir / "mfp-console.log")}
        for name, key in (("image.json", "image"), ("boot.json", "boot")):
            try:
                view[key] = json.loads((d / name).read_text())
            except (OSError, ValueError):
                view[key] = None
        return view

    def status(self, lab) -> dict:
        from lab.services.firmware import firmware_status

        if not self.running(lab):
            return {"running": False, "mfp": "vm"}
        try:
            return {"running": True, **firmware_status(lab)}
        except (OSError, ValueError) as exc:
            return {"running": True, "error": f"status socket: {exc}"}


def _format(disk: Path) -> str:
    return "qcow2" if disk.suffix == ".qcow2" else "raw"


def _seconds(systemd_span: str) -> float:
    """systemd's time span ("30s", "1min 30s", "500ms") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600}
    total = 0.0
    for part in systemd_span.split():
        num = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(num) * units.get(part[len(num):], 1)
    return total


def qmp(path: Path, command: str, timeout: float = 5.0) -> dict:
    """One QMP command on QEMU's monitor socket (greeting, qmp_capabilities, the command)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        f = s.makefile("rwb")

        def answer() -> dict:
            while True:
                line = f.readline()
                if not line:
                    raise LabError(f"qmp {command}: monitor closed")
                msg = json.loads(line)
                if "event" not in msg:
                    return msg

        answer()  # the greeting
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            reply = answer()
            if "error" in reply:
                raise LabError(f"qmp {cmd}: {reply['error']}")
        return reply


def vm_services(services: list) -> list:
    """The lab's services with the MFP as a guest: the firmware service replaced by the guest, the
    office LAN's DHCP and NTP servers before it; the
    office host's pcscd, nfcpy simulator and web panel dropped (the guest runs its own pcscd and
    panel; its reader is the PC/SC one only). The engine and the virtual card stay on office."""
    from lab.services.dhcp import DhcpService
    from lab.services.ntp import NtpService

    out = []
    for s in services:
        if s.name == "firmware":
            out += [DhcpService(MAC), NtpService(), MfpVmService()]
        elif s.name not in ("pcscd", "nfc-sim", "panel"):
            out.append(s)
    return out
