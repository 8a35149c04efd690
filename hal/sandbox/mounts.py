"""The mount side of sandboxes: the run root, the sandbox's own mount namespace, unmounting.

`run_root` (default /run/tenantprint/sandboxes) is a private bind mount of itself, mode 0700: no
mount below it propagates anywhere, and it holds each sandbox's `run_dir` (`<run_root>/<name>`, a
tmpfs, mode 0711 so that a sandbox's unprivileged daemons, cupsd's filters as lp, can traverse
their /run; only root reaches it from the device) and its mount-namespace handle
(`<run_root>/<name>.mnt`, an nsfs bind mount: the kernel never copies one into a new mount
namespace). `release_run_root` undoes the bind once no sandbox is left (tests, tools).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
from pathlib import Path

from hal.sandbox import SandboxError

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_MS_BIND, _MS_PRIVATE = 0x1000, 1 << 18
_MNT_DETACH, _EBUSY, _EINVAL, _ENOENT = 2, 16, 22, 2
_OCTAL = re.compile(r"\\([0-7]{3})")

# Run by `unshare --mount=<handle> --propagation private nsenter --net=<netns> sh -ec`, so in the
# sandbox's new mount namespace (a private copy of the device's) and inside its network namespace.
# Every mount inherited at or below /dev/shm, run_root, /run and /tmp is detached (another
# sandbox's run_dir, every netns handle: a copy here would keep them alive after their owner
# removed them), after parking our own run_dir, and the code paths that live under /tmp (a CI
# checkout), out of the way on the fresh /dev/shm. `-n`: /run/mount/utab is not ours to write.
SANDBOX_MOUNTS = r"""
run_dir=$1 run_root=$2 tmp_size=$3
shift 3
clear_tree() {
  while m=$(awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort | head -n 1) \
        && [ -n "$m" ]; do
    umount -n -l "$m"
  done
}
clear_tree /dev/shm
mount -n -t tmpfs -o mode=1777,nosuid,nodev,size=16m tmpfs /dev/shm
mkdir /dev/shm/.run
mount -n --move "$run_dir" /dev/shm/.run
i=0
for p in "$@"; do mkdir "/dev/shm/.keep$i"; mount -n --bind "$p" "/dev/shm/.keep$i"; i=$((i+1)); done
clear_tree "$run_root"; clear_tree /run; clear_tree /tmp
mount -n -t tmpfs -o "mode=1777,nosuid,nodev,size=${tmp_size}m" tmpfs /tmp
mount -n --move /dev/shm/.run /run
rmdir /dev/shm/.run
i=0
for p in "$@"; do mkdir -p "$p"; mount -n --move "/dev/shm/.keep$i" "$p"; rmdir "/dev/shm/.keep$i"; i=$((i+1)); done
umount -n -l /sys
mount -n -t sysfs -o nosuid,nodev,noexec sysfs /sys
"""


def mountpoints() -> set[str]:
    """Every mount point of the caller's mount namespace (mountinfo's octal escapes decoded)."""
    with open("/proc/self/mountinfo") as f:
        return {_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f}


def prepare_run_root(run_root: str | Path) -> Path:
    """Make `run_root` a private bind mount of itself, mode 0700 (idempotent)."""
    root = Path(run_root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    if str(root) not in mountpoints():
        path = os.fsencode(root)
        if _libc.mount(path, path, None, _MS_BIND, None) != 0 or _libc.mount(None, path, None, _MS_PRIVATE, None) != 0:
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
