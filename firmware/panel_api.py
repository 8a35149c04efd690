"""The panel socket: the one narrow way for a panel process (hal/panel) into the firmware.

A local unix socket (`panel.socket`, 0660 for `panel.socket_group`, the unprivileged panel
service's group; not the root control socket). Framing as the control socket
(`firmware/status.py`): one JSON request line per connection, one JSON reply line.

    {"cmd": "screen"}                              -> the screen document (firmware/screen.py) + "version"
    {"cmd": "wait", "after": V, "timeout": s}      -> the screen document once its version > V (s <= 25)
    {"cmd": "pin", "pin": "<digits>"}              -> {"ok": true} | {"error"}  (bytes, wiped: status.py)
    {"cmd": "pin-cancel"}                          -> {"ok": true}
    {"cmd": "choose-next"}                         -> {"ok": true}  the next tap lists the person's jobs
    {"cmd": "print", "session": N, "jobs": [ids]}  -> {"ok": true}  (no "jobs": all the person's jobs)
    {"cmd": "delete", "session": N, "jobs": [ids]} -> {"ok": true}
    {"cmd": "logout", "session": N}                -> {"ok": true}

The API trusts nothing it is sent: an action becomes a machine event, and the machine acts only
on the held jobs of the person its org's server accepted by a tap in that session (machine.py
`_panel_jobs`). "ok" means the request was taken, not that anything printed: the screen says what
happened.
"""

from __future__ import annotations

import asyncio

from firmware import events as ev
from firmware import machine

MAX_WAIT_S = 25.0
MAX_IDS = 100


class PanelRequestError(ValueError):
    """A request the panel API does not take (the reply's "error")."""


def _session(request: dict) -> int:
    number = request.get("session")
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise PanelRequestError("session: the screen's session number")
    return number


def _ids(request: dict, *, required: bool) -> tuple[int, ...] | None:
    ids = request.get("jobs")
    if ids is None and not required:
        return None
    if (not isinstance(ids, list) or not ids or len(ids) > MAX_IDS
            or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids)):
        raise PanelRequestError(f"jobs: a list of 1..{MAX_IDS} job ids")
    return tuple(dict.fromkeys(ids))


def event_for(request: dict, at: float, state) -> object | None:
    """The machine event an action request means (None: nothing to do in this state). Pure."""
    cmd = request.get("cmd")
    if cmd == "pin-cancel":
        return ev.PinCancelled(at, state.session) if isinstance(state, machine.AwaitingPin) else None
    if cmd == "choose-next":
        return ev.ChooseNext(at, state.session) if isinstance(state, machine.Ready) else None
    if cmd == "print":
        return ev.JobsChosen(at, _session(request), _ids(request, required=False))
    if cmd == "delete":
        return ev.JobsDeleted(at, _session(request), _ids(request, required=True))
    if cmd == "logout":
        return ev.LoggedOut(at, _session(request))
    raise PanelRequestError(f"unknown command {str(cmd)[:20]!r}")


def _steady(doc: dict) -> dict:
    """The screen without its countdowns (`idle_in_s`, `pin.remaining_s`)."""
    out = {k: v for k, v in doc.items() if k != "idle_in_s"}
    if isinstance(out.get("pin"), dict):
        out["pin"] = {k: v for k, v in out["pin"].items() if k != "remaining_s"}
    return out


class ScreenFeed:
    """The current screen document, numbered, and the waiters for its next change (on the loop)."""

    def __init__(self):
        self.version = 0
        self.doc: dict = {}
        self._changed = asyncio.Event()

    def update(self, doc: dict) -> bool:
        """Take `doc` as the screen; True when it differs from the one shown in more than its
        countdowns (a new version: the panel redraws, and a touch in the middle of a redraw is lost,
        so seconds ticking away do not make one; the panel counts down by itself)."""
        changed = _steady(doc) != _steady(self.doc)
        self.doc = doc
        if not changed:
            return False
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def current(self) -> dict:
        return {"version": self.version, **self.doc}

    async def wait(self, after: object, timeout: object) -> dict:
        if not isinstance(after, int) or isinstance(after, bool):
            raise PanelRequestError("after: a version number")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
            raise PanelRequestError("timeout: seconds")
        if self.version <= after:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), min(float(timeout), MAX_WAIT_S))
            except asyncio.TimeoutError:
                pass
        return self.current()
