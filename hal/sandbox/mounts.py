"""The mount side of sandboxes: the run root, the sandbox's own mount namespace, unmounting.

`run_root` (default /run/tenantprint/sandboxes) is a private bind mount of itself, mode 0700: no
mount below it propagates anywhere, and it holds each sandbox's `run_dir` (`<run_root>/<name>`, a
tmpfs, mode 0711 so that a sandbox's unprivileged daemons, cupsd's filters as lp, can traverse
their /run; only root reaches it from the device) and its record (`<run_root>/<name>.json`, see
`hal.sandbox.namespaces`). `release_run_root` undoes the bind once no sandbox is left (tests, tools).

No mount-namespace handle is bound anywhere: binding a mount namespace's nsfs file is refused
(EINVAL, the kernel's namespace-loop check) unless the binder's mount namespace has a lower id than
the bound one, and on kernel 6.18 ids are not handed out in creation order (measured inside a lab
host: the host's namespace 37357, a sandbox's made after it 33936). A holder process keeps a
sandbox's mount namespace instead (`hal.sandbox.namespaces`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import sys
import threading
from pathlib import Path

from hal.sandbox import SandboxError

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_MS_BIND, _MS_PRIVATE = 0x1000, 1 << 18
_MNT_DETACH, _EBUSY, _EINVAL, _ENOENT = 2, 16, 22, 2
_OCTAL = re.compile(r"\\([0-7]{3})")
_run_root_lock = threading.Lock()

# Run by `unshare --mount --propagation private nsenter --net=<netns> sh -ec`, so in the sandbox's
# new mount namespace (a private copy of the device's) and inside its network namespace. Every
# mount inherited at or below /dev/shm, run_root, /run and /tmp is detached (another sandbox's
# run_dir, every netns handle: a copy here would keep them alive after their owner removed them),
# after parking our own run_dir, and the code paths that live under /tmp (a CI checkout), out of
# the way on the fresh /dev/shm. `inherited` lists the outermost mounts (a lazy unmount takes its
# children along); `clear` repeats until none is left, for what those covered: a mount shadowed by
# a later one on a parent path (a lab host's /run/netns under its /run) or stacked on one path.
# `-n`: /run/mount/utab is not ours to write. The device checks the result (`foreign_mounts`).
SANDBOX_MOUNTS = r"""
run_dir=$1 run_root=$2 tmp_size=$3
shift 3
inherited() {
  awk -v roots="$*" 'BEGIN { n = split(roots, r, " ") }
    { for (i = 1; i <= n; i++) if ($5 == r[i] || index($5, r[i] "/") == 1) { print $5; break } }' /proc/self/mountinfo \
  | sort | awk 'top == "" || index($0, top "/") != 1 { print; top = $0 }'
}
clear() {
  while tops=$(inherited "$@") && [ -n "$tops" ]; do
    for m in $tops; do umount -n -l "$m"; done
  done
}
clear /dev/shm
mount -n -t tmpfs -o mode=1777,nosuid,nodev,size=16m tmpfs /dev/shm
mkdir /dev/shm/.run
mount -n --move "$run_dir" /dev/shm/.run
i=0
for p in "$@"; do mkdir "/dev/shm/.keep$i"; mount -n --bind "$p" "/dev/shm/.keep$i"; i=$((i+1)); done
clear "$run_root" /run /tmp
mount -n -t tmpfs -o "mode=1777,nosuid,nodev,size=${tmp_size}m" tmpfs /tmp
mount -n --move /dev/shm/.run /run
rmdir /dev/shm/.run
i=0
for p in "$@"; do mkdir -p "$p"; mount -n --move "/dev/shm/.keep$i" "$p"; rmdir "/dev/shm/.keep$i"; i=$((i+1)); done
umount -n -l /sys
mount -n -t sysfs -o nosuid,nodev,noexec sysfs /sys
"""


def _unescape(path: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), path)


def foreign_mounts(mountinfo: str, run_root: str | Path, keep=()) -> list[str]:
    """Pure: what a new sandbox's mount table (its /proc/<pid>/mountinfo) must not hold: any netns or
    other namespace handle, anything at or below /run, /tmp, /dev/shm or `run_root` but its own
    /run, /tmp and /dev/shm (one mount each) and the kept code paths."""
    allowed = {"/run": 1, "/tmp": 1, "/dev/shm": 1} | {str(k): 1 for k in keep}
    roots = ("/run", "/tmp", "/dev/shm", str(run_root))
    seen: dict[str, int] = {}
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        point, fstype = _unescape(fields[4]), fields[fields.index("-") + 1] if "-" in fields else ""
        if fstype == "nsfs":
            out.append(f"{point} (a namespace handle)")
            continue
        if any(point == r or point.startswith(r + "/") for r in roots):
            seen[point] = seen.get(point, 0) + 1
            if seen[point] > allowed.get(point, 0):
                out.append(point)
    return out


def mountpoints() -> set[str]:
    """Every mount point of the caller's mount namespace (mountinfo's octal escapes decoded)."""
    with open("/proc/self/mountinfo") as f:
        return {_unescape(line.split()[4]) for line in f}


def prepare_run_root(run_root: str | Path) -> Path:
    """Make `run_root` a private bind mount of itself, mode 0700 (idempotent; two sandboxes created
    at once from two threads bind it once)."""
    root = Path(run_root)
    with _run_root_lock:
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        if str(root) not in mountpoints():
            path = os.fsencode(root)
            if (_libc.mount(path, path, None, _MS_BIND, None) != 0
                    or _libc.mount(None, path, None, _MS_PRIVATE, None) != 0):
                raise SandboxError(f"private bind of {root}: {os.strerror(ctypes.get_errno())}")
    return root


def release_run_root(run_root: str | Path) -> None:
    """Undo `prepare_run_root` once no sandbox is left under it; remove it when empty."""
    root = Path(run_root)
    inside = [m for m in mountpoints() if m.startswith(f"{root}/")]
    if inside:
        raise SandboxError(f"{root} still holds {', '.join(sorted(inside))}")
    while str(root) in mountpoints():
        if _libc.umount2(os.fsencode(root), 0) != 0:
            raise SandboxError(f"umount {root}: {os.strerror(ctypes.get_errno())}")
    try:
        root.rmdir()
    except OSError:
        pass


def code_paths_under_tmp() -> list[str]:
    """This project's code and its Python, where they live under /tmp (a CI checkout): bound into
    the sandbox's private /tmp so the project's own programs run there too."""
    paths = {Path(__file__).resolve().parents[2], Path(sys.prefix).resolve()}
    return sorted(str(p) for p in paths if p.is_relative_to("/tmp"))


def record_path(run_root: str | Path, name: str) -> Path:
    """Pure: where sandbox `name`'s record lives (beside its run_dir, out of the sandbox's sight)."""
    return Path(run_root) / f"{name}.json"


def write_record(run_root: str | Path, name: str, record: dict) -> None:
    """Replace sandbox `name`'s record with `record` (atomically, mode 0600)."""
    path = record_path(run_root, name)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def read_record(run_root: str | Path, name: str) -> dict | None:
    """Sandbox `name`'s record, None when there is none (or it cannot be read)."""
    try:
        record = json.loads(record_path(run_root, name).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def unmount(path: Path) -> list[str]:
    """Unmount every mount stacked at `path`. A busy one (a device process holds a file in it) is
    detached, and said: its memory goes when the holder lets go."""
    out = []
    while str(path) in mountpoints():
        if _libc.umount2(os.fsencode(path), 0) != 0:
            err = ctypes.get_errno()
            if err != _EBUSY or _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
                return out + [f"umount {path}: {os.strerror(ctypes.get_errno() if err == _EBUSY else err)}"]
            out.append(f"{path} was busy (detached; freed when its holder closes it)")
    return out


def detach(path: Path) -> list[str]:
    """Lazily unmount `path` when it is a mount point (as `ip netns del` does with a netns handle)."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0 and ctypes.get_errno() not in (_EINVAL, _ENOENT):
        return [f"umount {path}: {os.strerror(ctypes.get_errno())}"]
    return []
