"""The device's clock: is it synchronised to network time?

A Raspberry Pi has no battery-backed clock. At boot the time is what systemd-timesyncd saved at the
last shutdown (or the image's build date), and TLS to the cloud, RadSec and IKE with certificates
all check validity periods against it: with a wrong clock they fail, or worse, accept what has
expired. So the firmware serves only once the clock is synchronised, and says so while it is not
("clock not synchronised", `firmware.runtime`), instead of the boot waiting for NTP without limit
(systemd-time-wait-sync) and nothing saying why the printer never comes up.

`synchronised()` says yes when systemd-timesyncd has synchronised the clock since boot (it creates
`/run/systemd/timesync/synchronized` then: the image's NTP client, which takes its servers from DHCP
through systemd-networkd's `UseNTP=`), or else when the kernel says so, the way timedatectl's
`NTPSynchronized` does: `adjtimex(2)` with no change, STA_UNSYNC clear and a maximum error under
16 s (any NTP client that set the clock, chrony and ntpd too, clears STA_UNSYNC). `date -s` alone
does neither, nor does the time saved at the last shutdown. The firmware's unit refuses adjtimex
itself (`SystemCallFilter=~@clock`, `ProtectClock=`: read-only or not, the filter cannot tell), so
on the device the flag file is what counts; the kernel is asked where the call is allowed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

STA_UNSYNC = 0x0040
TIME_ERROR = 5
MAX_ERROR_US = 16_000_000  # timedated's bound: a larger estimated error is not "synchronised"


class ClockError(Exception):
    """The kernel could not be asked."""


class _Timex(ctypes.Structure):
    # struct timex (include/uapi/linux/timex.h) as glibc lays it out on 64-bit and 32-bit Linux:
    # longs where the kernel has __kernel_long_t; only the first fields are read, the rest is room.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("_rest", ctypes.c_byte * 160)]


def judge(result: int, status: int, maxerror_us: int) -> bool:
    """Synchronised, from what adjtimex answered (pure: the unit tests' way in)."""
    return result != TIME_ERROR and not status & STA_UNSYNC and 0 <= maxerror_us < MAX_ERROR_US


SYNC_FLAG = "/run/systemd/timesync/synchronized"
_libc = None


def synchronised(flag: str = SYNC_FLAG) -> bool:
    """Whether the clock is synchronised to network time (never raises: a kernel that cannot be
    asked counts as not synchronised)."""
    if os.path.exists(flag):
        return True
    try:
        return kernel_synchronised()
    except ClockError:
        return False


def kernel_synchronised() -> bool:
    """Whether the kernel says the clock is synchronised. Raises ClockError when adjtimex fails
    (EPERM under a seccomp filter without @clock)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()  # modes 0: read only
    result = _libc.adjtimex(ctypes.byref(tx))
    if result < 0:
        raise ClockError(f"adjtimex: {os.strerror(ctypes.get_errno())}")
    return judge(result, tx.status, tx.maxerror)
