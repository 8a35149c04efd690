"""The secret keeper: a child process that alone holds one organization's secrets for one session.

Python cannot promise to erase what it frees: the HTTP response that carried a profile, the strings
the JSON parser made, the buffers of a VICI message all linger in the heap after use. So the daemon
never touches an org secret. Per session it starts this keeper; the keeper fetches the profile,
loads it into charon and talks to the org's RADIUS server, and answers the daemon with non-secret
facts only. The purge ends the process, and with it every copy of every secret it ever held.

The daemon starts the next session's keeper ahead of time; while it waits, it keeps a connection to
the directory open (a health check every `cloud.keep_warm_s`), so the tap's lookup is one round trip
instead of three (TCP, TLS, request). That connection carries nothing secret until the lookup.

Protocol: JSON lines on the keeper's stdin/stdout. The first line is the firmware configuration;
then one request, one reply:

    {"op": "fetch", "org": O}              -> {"org", "remote_ts", "gateway", "policy", "device_networks", "desk_keys"} | {"error": kind}
    {"op": "tunnel_up", "timeout_s": s}    -> {"virtual_ip", "interface", "remote_ts"} | {"error": cause}
    {"op": "auth", "user", "org", "pin", "state"}  -> {"outcome": name, ...}
    {"op": "exit"}                          -> (the keeper wipes what it holds and exits)
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any


class KeeperError(Exception):
    """The keeper process failed or did not answer in time."""


class SecretKeeper:
    """The daemon's handle on one keeper process (thread-safe: one request at a time)."""

    def __init__(self, config: dict):
        self._lock = threading.Lock()
        # binary and unbuffered: answers are read with select() and a deadline, no reader thread
        self._proc = subprocess.Popen([sys.executable, "-m", "firmware.secret_keeper"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, bufsize=0)
        self._pending = b""
        self._send(config)

    def _send(self, obj: dict) -> None:
        self._write((json.dumps(obj) + "\n").encode())

    def _write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[self._proc.stdin.write(view):]
        except (OSError, ValueError) as exc:  # a closed pipe, or a closed file after stop()
            raise KeeperError(f"keeper not reachable: {type(exc).__name__}") from None
        finally:
            view.release()

    def _read_line(self, timeout: float) -> bytes | None:
        """The keeper's next line, or None at its end or when `timeout` passed."""
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def authenticate(self, timeout: float, *, user: str, org: str, pin=None, state: bytes | None = None) -> dict:
        """The `auth` request. The PIN (a `firmware.events.Pin`) is spliced into the request line
        as bytes, never made a `str` in this process, and the line is wiped once written."""
        fields = {"user": user, "org": org, "state": state.hex() if state else None}
        if pin is None:
            return self.call("auth", timeout, pin=None, **fields)
        digits = pin.reveal()
        if not digits or not all(0x30 <= b <= 0x39 for b in digits):
            raise KeeperError("a PIN is digits only")
        line = bytearray(json.dumps({"op": "auth", **fields})[:-1].encode())  # without its closing brace
        line += b', "pin": "'
        line += digits
        line += b'"}\n'
        try:
            return self._exchange("auth", timeout, line)
        finally:
            for i in range(len(line)):
                line[i] = 0

    def call(self, op: str, timeout: float, **args: Any) -> dict:
        return self._exchange(op, timeout, (json.dumps({"op": op, **args}) + "\n").encode())

    def _exchange(self, op: str, timeout: float, line: bytes | bytearray) -> dict:
        with self._lock:
            try:
                self._write(line)
            except KeeperError:
                self.stop()
                raise
            try:
                answer = self._read_line(timeout)
            except (OSError, ValueError):
                answer = None
            if not answer:
                self.stop()
                raise KeeperError(f"keeper gave no answer to {op}")
            return json.loads(answer)

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> None:
        """End the keeper: ask, then kill. Idempotent."""
        if self._proc.poll() is None:
            try:
                self._send({"op": "exit"})
                self._proc.wait(timeout=2)
            except (KeeperError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait(timeout=5)
        for f in (self._proc.stdin, self._proc.stdout):
            try:
                f.close()
            except OSError:
                pass


# -- the keeper process ---------------------------------------------------------------------------

def _keep_warm(directory, every_s: float, stop: threading.Event, networks: list) -> None:
    """While the keeper waits for its session, keep a connection to the directory open, and know
    the device's own networks (read now, not on the tap's path)."""
    from hal.net import NetError
    from hal.net.addresses import connected_networks

    def look() -> None:
        try:
            networks[:] = connected_networks(exclude=("lo", "ipsec0"))
        except NetError:
            networks[:] = ["unknown"]  # the firmware refuses a profile it cannot check

    look()
    while not stop.is_set():
        if every_s > 0 and hasattr(directory, "warm"):
            directory.warm()
        if stop.wait(every_s if every_s > 0 else 3600):
            return  # the tap's lookup waits for this thread: nothing more on its path
        look()


def _serve(stdin, stdout) -> None:
    from firmware import config as fwconfig
    from firmware.devices import build_directory, build_tunnel
    from hal.auth import (Accepted, AuthConfigError, BadInput, PinRequired, Rejected, Unavailable,
                          open_authenticator)
    from hal.directory import DirectoryMalformed, DirectoryRefused, DirectoryUnreachable
    from hal.tunnel import TunnelError, TunnelSetupFailed

    cfg = fwconfig.from_dict(json.loads(stdin.readline()))
    directory = build_directory(cfg)
    tunnel = build_tunnel(cfg)
    profile = None
    authenticator = None
    first_request = threading.Event()
    device_networks: list = []
    warm = threading.Thread(target=_keep_warm, args=(directory, cfg.cloud.keep_warm_s, first_request,
                                                     device_networks), name="keep-warm", daemon=True)
    warm.start()

    def reply(obj: dict) -> None:
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    for line in stdin:
        first_request.set()
        req = json.loads(line)
        op = req.get("op")
        if op == "exit":
            break
        if op == "fetch":
            warm.join(timeout=5)  # its first look at the device's networks is done long before a tap
            try:
                profile = directory.fetch_profile(req["org"])
                if profile.org_id != req["org"]:
                    raise DirectoryMalformed("answer for another organization")
            except DirectoryRefused as exc:
                reply({"error": "device-rejected" if exc.status == 401 else "refused"})
                continue
            except DirectoryUnreachable:
                reply({"error": "unreachable"})
                continue
            except DirectoryMalformed:
                reply({"error": "malformed"})
                continue
            p = profile.policy
            reply({"org": profile.org_id, "remote_ts": list(profile.vpn.remote_ts),
                   "gateway": profile.vpn.gateway,  # not secret: the device firewall admits only it
                   "policy": {"idle_timeout_s": p.idle_timeout_s, "max_hold_s": p.max_hold_s,
                              "combined_mode": p.combined_mode},
                   "device_networks": list(device_networks),
                   "desk_keys": [base64.b64encode(k).decode() for k in profile.desk_keys]})
        elif op == "tunnel_up":
            if profile is None:
                reply({"error": "config"})
                continue
            try:
                up = tunnel.up(profile, timeout=float(req["timeout_s"]))
            except TunnelSetupFailed as exc:
                reply({"error": exc.cause})
                continue
            except (TunnelError, OSError) as exc:
                reply({"error": type(exc).__name__})
                continue
            reply({"virtual_ip": up.virtual_ip, "interface": up.interface, "remote_ts": list(up.remote_ts)})
            if authenticator is None:
                # Now, while the person walks to their desk, not at their next tap (imports, dictionary).
                try:
                    authenticator = open_authenticator(profile.auth)
                except AuthConfigError:
                    pass  # answered when authentication is asked for
        elif op == "auth":
            if profile is None:
                reply({"outcome": "unavailable", "reason": "no session"})
                continue
            try:
                authenticator = authenticator or open_authenticator(profile.auth)
            except AuthConfigError as exc:  # a profile we cannot use: not yes, and the keeper lives on
                reply({"outcome": "unavailable", "reason": f"auth server profile unusable: {exc}"})
                continue
            state = bytes.fromhex(req["state"]) if req.get("state") else None
            outcome = authenticator.authenticate(req["user"], req["org"], pin=req.get("pin"), state=state)
            match outcome:
                case Accepted(user=u):
                    reply({"outcome": "accepted", "user": u})
                case Rejected(user=u, message=m):
                    reply({"outcome": "rejected", "user": u, "message": m})
                case PinRequired(user=u, challenge=c, prompt=pr):
                    reply({"outcome": "pin-required", "user": u, "challenge": c.hex(), "prompt": pr})
                case Unavailable(reason=r):
                    reply({"outcome": "unavailable", "reason": r})
                case BadInput(reason=r):
                    reply({"outcome": "bad-input", "reason": r})
        else:
            reply({"error": f"unknown op {op!r}"})
    if profile is not None:
        profile.wipe()


if __name__ == "__main__":
    _serve(sys.stdin, sys.stdout)  # the profile is wiped on the way out
    sys.stdout.flush()
    # No interpreter teardown (tens of ms of module finalisation on the purge's path): what the
    # process held goes with it either way.
    os._exit(0)
