"""The image's package list, replayed with apt: the engine path is installed and no purge takes it away.

provisioning/image/build-image installs, in order, what `apt_steps()` says: mmdebstrap's --include
(packages/base, the target's kernel, packages/device-nr, all without Recommends, on top of
--variant=minbase), packages/device (with Recommends), the purge of packages/purge and an
autoremove, then (only when a Python dependency must be compiled) packages/build-deps, installed,
and every package that install added purged again. This test replays exactly those steps, taken from build-image
itself, with `apt-get -s` against a dpkg status of its own: first an EMPTY one, then one describing
what the replay has installed so far (each package's Depends, Pre-Depends, Recommends, Provides...
from `apt-cache show` of the chosen version) with apt's extended_states saying which were pulled in
automatically, so `autoremove` judges as in the build.

This machine's apt lists (Debian 12 bookworm, amd64) are the twin's archive; the Raspberry Pi image
differs only in its kernel packages (linux-image-arm64 and raspi-firmware from non-free-firmware,
which these lists may lack): the replay uses the twin's. The minbase system mmdebstrap lays down
first (Essential and Priority: required) is not replayed: which of the listed packages stay does
not depend on it. Nothing is installed: apt only simulates (`-s`), with its cache files in tmp_path,
never the machine's.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from image_recipe import build_image_module
from prereq import need, need_binary

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "provisioning/image"
LAB_LAYER = RECIPE / "lab-layer"


build_image = build_image_module()

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
         # the build dependencies: installed to compile pyscard/pycups/evdev, then purged
         "build-essential", "python3-dev", "swig", "libpcsclite-dev", "libcups2-dev", "gcc", "cpp", "make",
         # no swap on the device (the session tmpfs and the firmware's memory hold org data)
         "dphys-swapfile", "zram-tools", "systemd-zram-generator",
         # the firmware starts without NTP ("clock not synchronised"): nothing waits for it at boot
         "systemd-time-wait-sync"}
# The system under the firmware: networkd is in systemd; resolved, timesyncd, ssh, the venv.
SYSTEM = {"systemd", "systemd-sysv", "systemd-resolved", "systemd-timesyncd", "udev", "dbus", "openssh-server", "sudo",
          "python3", "python3-venv", "initramfs-tools", "linux-image-amd64", "libpam-systemd"}
# Fields of an `apt-cache show` stanza that a dpkg status entry carries and apt's solver reads.
STATUS_FIELDS = ("Package", "Essential", "Priority", "Section", "Architecture", "Multi-Arch", "Version",
                 "Provides", "Depends", "Pre-Depends", "Recommends", "Suggests", "Conflicts", "Breaks",
                 "Replaces")
INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ")
REMOVED = re.compile(r"^(?:Remv|Purg) (\S+)")


@dataclass
class Step:
    """One apt-get run of the build: `command` is install, purge or autoremove."""

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


def recipe_steps(layers=()) -> list[Step]:
    """Every apt step of build-image --target twin, in its order, build deps included."""
    return [Step(st.origin, st.command, list(st.packages), st.recommends)
            for st in build_image.apt_steps("twin", list(layers))]


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


def _minbase_closure(apt: AptSimulator, replay: Replay) -> set[str]:
    """The installed Essential and Priority: required packages and what they depend on: minbase."""
    def stanza(name):
        return apt.stanzas.get((name, replay.installed.get(name)), "")

    todo = [n for n in replay.installed if re.search(r"^(Essential: yes|Priority: required)$", stanza(n), re.M)]
    seen = set(todo)
    while todo:
        for relation in re.findall(r"^(?:Pre-)?Depends: (.*)$", stanza(todo.pop()), re.M):
            for alternative in relation.split(","):
                name = alternative.split("|")[0].split("(")[0].split(":")[0].strip()
                if name in replay.installed and name not in seen:
                    seen.add(name)
                    todo.append(name)
    return seen


def replay_recipe(work: Path, layers=()) -> Replay:
    apt = AptSimulator(work)
    replay = Replay()
    started = time.monotonic()
    added: list[str] = []  # what the last install added ("@added": hooks/20-venv.sh purges exactly that)
    for step in recipe_steps(layers):
        if step.packages == ["@added"]:
            # minbase has every Essential and Priority: required package before the build deps come;
            # this replay does not (it starts from nothing), so the build deps' install brings some
            # of them here: they are not the build deps' to take away.
            base = _minbase_closure(apt, replay)
            step = Step(step.origin, step.command, [n for n in added if n not in base], step.recommends)
        before = set(replay.installed)
        lines = apt.run(step, before)
        removed = [m.group(1) for m in map(REMOVED.match, lines) if m]
        for name in removed:
            replay.installed.pop(name, None)
            replay.manual.discard(name)
        new = [(name.split(":")[0], version) for name, version in (m.groups() for m in map(INST.match, lines) if m)]
        for name, version in new:
            replay.installed[name] = version
        if step.command == "install":  # new names only, as the hook's dpkg-query comparison (not upgrades)
            added = [name for name, _ in new if name not in before]
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
    return replay_recipe(tmp_path_factory.mktemp("apt"))


def _installed_by_the_recipe(steps) -> set[str]:
    """What the recipe installs on purpose (not the build deps, which it purges again)."""
    return {p for s in steps if s.command == "install" and "build-deps" not in s.origin for p in s.packages}


def test_the_recipe_lists_and_purges_what_the_replay_follows():
    steps = recipe_steps()
    installs = _installed_by_the_recipe(steps)
    assert ENGINE_PATH <= installs, "the engine path belongs in the image's own package list"
    assert DEVICE <= installs | {"strongswan-libcharon", "libstrongswan"}
    purges = {p for s in steps if s.command == "purge" for p in s.packages}
    assert {"vsmartcard-vpcd", "cups-browsed"} <= purges
    assert "avahi-daemon" not in purges, "purging avahi-daemon purges ipp-usb, which depends on it"
    assert "strongswan-starter" not in purges, "purging strongswan-starter purges strongswan-charon"
    assert [s.command for s in steps[2:4]] == ["purge", "autoremove"]
    build_deps = [s for s in steps if "build-deps" in s.origin]
    assert [s.command for s in build_deps] == ["install", "purge"]
    assert build_deps[1].packages == ["@added"], "everything the build deps brought is purged again"
    assert not NEVER & installs - set(build_deps[0].packages)


def test_engine_path_and_device_packages_are_on_the_image(replay):
    missing = (ENGINE_PATH | DEVICE | SYSTEM) - set(replay.installed)
    assert not missing, f"not on the image after the recipe's purges: {sorted(missing)}"


def test_no_purge_or_autoremove_takes_a_listed_package(replay):
    listed = _installed_by_the_recipe(recipe_steps())
    taken = {origin: sorted(set(removed) & (listed | ENGINE_PATH | DEVICE | SYSTEM))
             for origin, removed in replay.removed_by.items()}
    assert not {o: t for o, t in taken.items() if t}, taken


def test_what_must_never_be_on_a_device_is_gone(replay):
    assert not NEVER & set(replay.installed), sorted(NEVER & set(replay.installed))
    assert not {p for p in replay.installed if "vpcd" in p or "vsmartcard" in p}


def test_the_panel_packages_are_on_the_image(replay):
    """The kiosk (cage, chromium, Japanese glyphs) survives the recipe's purges."""
    missing = {"cage", "chromium", "fonts-noto-cjk", "libgl1-mesa-dri"} - set(replay.installed)
    assert not missing, sorted(missing)
    assert "chromium-sandbox" not in replay.installed  # no setuid sandbox under NoNewPrivileges=


def test_the_lab_layer_adds_its_packages_after_the_purge():
    """The twin's lab layer installs after the device's purge (its vpcd survives on the twin only)."""
    steps = recipe_steps([LAB_LAYER])
    layer = [s for s in steps if s.origin.startswith("layer ")]
    if not (LAB_LAYER / "packages").exists():
        assert not layer
        return
    assert layer and steps.index(layer[0]) > max(i for i, s in enumerate(steps) if s.command == "purge")
    assert all(not s.recommends for s in layer)
