"""The image's package list, replayed with apt: the engine path is installed and no purge takes it away.

pi-gen installs each sub-stage's `NN-packages` (with Recommends) and `NN-packages-nr` (without),
then runs its `NN-run-chroot.sh`, whose `apt-get install|purge|autoremove` lines change that set.
This test replays exactly that with `apt-get -s` against a dpkg status of its own: first an EMPTY
one, then one describing what the replay has installed so far (each package's Depends,
Pre-Depends, Recommends, Provides... from `apt-cache show` of the chosen version) with apt's
extended_states saying which were pulled in automatically, so `autoremove` judges as on the Pi.

Stand-in: this machine's apt lists (Debian 12 bookworm, amd64) play Raspberry Pi OS bookworm arm64,
which is built on the same Debian packages and dependencies for another architecture. Raspberry Pi's
own archive adds (and may override) packages that these lists lack, so a real pi-gen build remains
the last word. Starting from an empty status makes the replay install a base system too, where
stage2 already has one; which of the listed packages stay does not depend on that. Nothing is
installed: apt only simulates (`-s`), with its cache files in tmp_path, never the machine's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from prereq import need, need_binary

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "provisioning/pi-gen/stage-tenantprint"

# What the engine path and the rest of the device need on the finished image.
ENGINE_PATH = {
    "ipp-usb",                  # driverless USB printers, IPP on localhost:60000+
    "avahi-daemon",             # ipp-usb depends on it (masked on the device)
    "cups",                     # /usr/lib/cups/backend-available/usb, linked as backend/usb
    "cups-daemon",              # the per-session cupsd
    "cups-client",
    "cups-filters",             # driverless, pdftopdf, gstoraster...
    "ghostscript",              # PDF to PWG raster / URF
    "printer-driver-brlaser",
    "printer-driver-gutenprint",
}
# strongswan-charon: /usr/lib/ipsec/charon, started by the firmware in each sandbox, with its plugins
# (vici in strongswan-swanctl, kernel-libipsec in libcharon-extra-plugins, openssl in the standard
# ones, curve25519 in the extra ones, kernel-netlink and socket-default in libstrongswan and
# strongswan-libcharon). strongswan-starter stays too: strongswan-charon depends on it (it is masked).
DEVICE = {"strongswan-charon", "strongswan-libcharon", "libstrongswan", "strongswan-swanctl", "libcharon-extra-plugins",
          "libstrongswan-standard-plugins", "libstrongswan-extra-plugins", "pcscd", "libccid", "nftables",
          "iproute2", "python3-venv"}
NEVER = {"vsmartcard-vpcd", "cups-browsed",
         # nothing runs strongswan.service on the device
         "charon-systemd",
         # 01-tenantprint's build dependencies: installed to compile pyscard/pycups, then purged
         "build-essential", "python3-dev", "swig", "libpcsclite-dev", "libcups2-dev"}
# Fields of an `apt-cache show` stanza that a dpkg status entry carries and apt's solver reads.
STATUS_FIELDS = ("Package", "Essential", "Priority", "Section", "Architecture", "Multi-Arch", "Version",
                 "Provides", "Depends", "Pre-Depends", "Recommends", "Suggests", "Conflicts", "Breaks",
                 "Replaces")
INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ")
REMOVED = re.compile(r"^(?:Remv|Purg) (\S+)")


@dataclass
class Step:
    """One apt-get run as the stage does it: `command` is install, purge or autoremove."""

    origin: str
    command: str
    packages: list[str]
    recommends: bool = True


@dataclass
class Replay:
    """What apt installed so far, and each step's outcome."""

    installed: dict[str, str] = field(default_factory=dict)  # name -> version
    manual: set[str] = field(default_factory=set)
    removed_by: dict[str, list[str]] = field(default_factory=dict)  # step origin -> packages removed
    seconds: float = 0.0


def _package_file(path: Path) -> list[str]:
    # pi-gen strips comments with remove-comments.sed (`#` to the end of the line).
    return " ".join(line.split("#", 1)[0] for line in path.read_text().splitlines()).split()


def _script_steps(script: Path) -> list[Step]:
    """The `apt-get` lines of a chroot script, with its plain `NAME="..."` variables expanded."""
    text = script.read_text()
    variables = dict(re.findall(r'^([A-Z_][A-Z0-9_]*)="([^"]*)"\s*$', text, re.M))
    steps = []
    for line in re.findall(r"^\s*apt-get\s+(.*)$", text, re.M):
        line = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: variables.get(m.group(1), m.group(0)), line)
        words = shlex.split(line.split("||")[0].split("#")[0])
        options = {w for w in words if w.startswith("-")}
        args = [w for w in words if not w.startswith("-")]
        assert args and args[0] in ("install", "purge", "remove", "autoremove"), f"{script}: apt-get {line}"
        steps.append(Step(f"{script.relative_to(STAGE)}: apt-get {line.strip()}", args[0], args[1:],
                          recommends="--no-install-recommends" not in options))
    return steps


def stage_steps() -> list[Step]:
    """Every apt step of the stage in pi-gen's order: per sub-stage, per NN: packages-nr, packages, chroot."""
    steps = []
    for sub in sorted(p for p in STAGE.iterdir() if p.is_dir()):
        for nn in (f"{i:02d}" for i in range(100)):
            nr, rec, chroot = sub / f"{nn}-packages-nr", sub / f"{nn}-packages", sub / f"{nn}-run-chroot.sh"
            if nr.exists():
                steps.append(Step(str(nr.relative_to(STAGE)), "install", _package_file(nr), recommends=False))
            if rec.exists():
                steps.append(Step(str(rec.relative_to(STAGE)), "install", _package_file(rec), recommends=True))
            if chroot.exists():
                steps += _script_steps(chroot)
    return steps


class AptSimulator:
    """`apt-get -s` and `apt-cache show` against a dpkg status and extended_states kept in `work`."""

    def __init__(self, work: Path):
        self.work = work
        self.status, self.extended = work / "status", work / "extended_states"
        (work / "cache").mkdir()
        self.status.write_text("")
        self.extended.write_text("")
        self.stanzas: dict[tuple[str, str], str] = {}

    def _options(self) -> list[str]:
        # The cache files live in work (the machine's own are never written); they are kept across
        # runs because apt rebuilds only the status part of them, which keeps each run ~2 s.
        return ["-o", f"Dir::State::status={self.status}", "-o", f"Dir::State::extended_states={self.extended}",
                "-o", f"Dir::Cache={self.work / 'cache'}", "-o", "Dir::Cache::pkgcache=pkgcache.bin",
                "-o", "Dir::Cache::srcpkgcache=srcpkgcache.bin", "-o", "Debug::NoLocking=true",
                "-o", "APT::AutoRemove::RecommendsImportant=true"]

    def run(self, step: Step, installed: set[str]) -> list[str]:
        packages = step.packages
        if step.command in ("purge", "remove"):
            # A package the replay does not have is a no-op for apt (or guarded by `dpkg -s` in the script).
            packages = [p for p in packages if p in installed]
            if not packages:
                return []
        argv = ["apt-get", "-s", "-y", *self._options(), "-o",
                f"APT::Install-Recommends={'true' if step.recommends else 'false'}", step.command, *packages]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "LC_ALL": "C.UTF-8"})
        assert proc.returncode == 0, f"{step.origin}\n{proc.stdout[-3000:]}\n{proc.stderr}"
        return proc.stdout.splitlines()

    def write_state(self, replay: Replay) -> None:
        missing = [f"{n}={v}" for n, v in replay.installed.items() if (n, v) not in self.stanzas]
        if missing:
            proc = subprocess.run(["apt-cache", *self._options(), "show", *missing],
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            for stanza in proc.stdout.split("\n\n"):
                fields = _fields(stanza)
                if "Package" in fields:
                    self.stanzas.setdefault((fields["Package"], fields["Version"]), _status_entry(fields))
        self.status.write_text("".join(self.stanzas[(n, v)] for n, v in sorted(replay.installed.items())))
        self.extended.write_text("".join(f"Package: {n}\nArchitecture: {_arch(self.stanzas[(n, v)])}\n"
                                         f"Auto-Installed: 1\n\n"
                                         for n, v in sorted(replay.installed.items()) if n not in replay.manual))


def _fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") or ":" not in line:
            continue  # continuation lines belong to Description, which the status does not need
        key, _, value = line.partition(":")
        fields.setdefault(key, value.strip())
    return fields


def _status_entry(fields: dict[str, str]) -> str:
    lines = [f"{k}: {fields[k]}" for k in STATUS_FIELDS if k in fields]
    lines.insert(1, "Status: install ok installed")
    return "\n".join(lines) + "\n\n"


def _arch(entry: str) -> str:
    return re.search(r"^Architecture: (\S+)", entry, re.M).group(1)


def replay_stage(work: Path) -> Replay:
    apt = AptSimulator(work)
    replay = Replay()
    started = time.monotonic()
    for step in stage_steps():
        lines = apt.run(step, set(replay.installed))
        removed = [m.group(1) for m in map(REMOVED.match, lines) if m]
        for name in removed:
            replay.installed.pop(name, None)
            replay.manual.discard(name)
        for name, version in (m.groups() for m in map(INST.match, lines) if m):
            replay.installed[name.split(":")[0]] = version
        if step.command == "install":
            replay.manual.update(p for p in step.packages if p in replay.installed)
        replay.removed_by[step.origin] = removed
        apt.write_state(replay)
    replay.seconds = time.monotonic() - started
    return replay


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Replay:
    need_binary("apt-get", "apt-cache")
    policy = subprocess.run(["apt-cache", "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
                             "policy", "ipp-usb"], capture_output=True, text=True)
    need("Candidate:" in policy.stdout and "Candidate: (none)" not in policy.stdout,
         "apt package lists with Debian 12's packages (run apt-get update)")
    return replay_stage(tmp_path_factory.mktemp("apt"))


def test_the_stage_lists_and_purges_what_the_replay_follows():
    steps = stage_steps()
    installs = {p for s in steps if s.command == "install" and s.origin.endswith("packages") for p in s.packages}
    assert ENGINE_PATH <= installs, "the engine path belongs in the image's own package list"
    purges = {p for s in steps if s.command == "purge" for p in s.packages}
    assert {"vsmartcard-vpcd", "cups-browsed"} <= purges
    assert "avahi-daemon" not in purges, "purging avahi-daemon purges ipp-usb, which depends on it"
    assert "strongswan-starter" not in purges, "purging strongswan-starter purges strongswan-charon"
    assert any(s.command == "autoremove" for s in steps)


def test_engine_path_and_device_packages_are_on_the_image(replay):
    missing = (ENGINE_PATH | DEVICE) - set(replay.installed)
    assert not missing, f"not on the image after the stage's purges: {sorted(missing)}"


def test_no_purge_or_autoremove_takes_a_listed_package(replay):
    listed = {p for s in stage_steps() if s.command == "install" and s.origin.endswith("packages")
              for p in s.packages}
    taken = {origin: sorted(set(removed) & (listed | ENGINE_PATH | DEVICE))
             for origin, removed in replay.removed_by.items()}
    assert not {o: t for o, t in taken.items() if t}, taken


def test_what_must_never_be_on_a_device_is_gone(replay):
    assert not NEVER & set(replay.installed), sorted(NEVER & set(replay.installed))


def test_the_panel_packages_are_on_the_image(replay):
    """The kiosk (cage, chromium, Japanese glyphs) survives the stage's purges."""
    missing = {"cage", "chromium", "fonts-noto-cjk"} - set(replay.installed)
    assert not missing, sorted(missing)
