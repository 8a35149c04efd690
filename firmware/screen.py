"""What the operation panel shows now: the screen document, made from the machine's state.

Pure: `screen_of(state, shown, now, facts)` -> a dict (the panel socket's `screen` reply, without
its `version`; `firmware/panel_api.py` numbers it). The document carries panel *keys* and fields,
never rendered text: the panel renders them in the person's language (`firmware/panel.py`).

What a screen may show (the rules of a shared device):
- the authenticated person's own held and printing jobs, only while they are logged in at the
  panel (`machine.panel_fresh`), never anyone else's titles;
- the org of the session shown, only while it is a session: once purged, a screen shows no org,
  user or job (an outcome line loses its fields: "Connection lost — session ended");
- other organizations' sessions at most as a count (`others`).
"""

from __future__ import annotations

import re
import time as _time
from dataclasses import dataclass, field

from firmware import machine as m
from firmware import panel

SCREENS = ("idle", "progress", "ready", "pin", "jobs", "printing", "message", "out-of-service")
QUEUE_PREFIX = "tenantprint-"  # as the desk agent names its queue for an MFP (org/desk_listing.py)
MAX_JOBS = 50                  # a screen lists at most this many of a person's jobs
MAX_TITLE = 80


@dataclass(frozen=True)
class Shown:
    """The machine's last ShowPanel: key, fields, and when (monotonic)."""
    key: str = "starting"
    fields: tuple = ()
    at: float = 0.0


@dataclass
class Facts:
    """What the runtime knows beside the machine's state (none of it secret)."""
    jobs: dict = field(default_factory=dict)        # job id -> {"title", "bytes", "pages", "at"} (session's)
    printing: list = field(default_factory=list)    # [(session, job_id, user, title, state)] released, not ended
    condition: str = ""                             # the engine's condition key ("" when all is well)
    attempts_left: int | None = None                # wrong PINs the person may still type
    typed: int = 0                                  # digits typed on the keypad for this PIN (dots)
    local_id: str = ""                              # the MFP's IKE identity in the session's org
    others: int = 0                                 # other organizations' sessions
    lang: str = "en"
    limits: m.Limits = m.LIMITS                     # the PIN's and the panel's timeouts
    clock_synced: bool = True                       # False: no session opens (hal/clock)


def queue_name(local_id: str) -> str | None:
    """The desk's name for this MFP's queue (org/desk_listing.py names it so)."""
    return QUEUE_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", local_id)[:100] if local_id else None


def _line(key: str, fields: tuple = ()) -> dict:
    return {"key": key, "fields": {k: panel.mask_card(v) for k, v in fields if isinstance(v, (str, int, float))}}


def _job(job_id: int, info: dict) -> dict:
    at = info.get("at")
    return {"id": job_id, "title": str(info.get("title") or "")[:MAX_TITLE] or f"#{job_id}",
            "pages": info.get("pages"), "size": int(info.get("bytes") or 0),
            "at": _time.strftime("%H:%M", _time.localtime(at)) if isinstance(at, (int, float)) else None}


def screen_of(state: m.State, shown: Shown, now: float, facts: Facts) -> dict:
    doc = {"screen": "idle", "session": None, "line": {"key": "idle", "fields": {}},
           "printer": facts.condition or None, "org": None, "queue": None, "pin": None, "user": None,
           "jobs": [], "printing": [], "others": facts.others, "idle_in_s": None, "lang": facts.lang}
    return_s = facts.limits.panel_return_s
    recent = now - shown.at < return_s
    if isinstance(state, (m.Fault, m.Stopped)):
        return {**doc, "screen": "out-of-service", "line": _line("out-of-service")}
    if isinstance(state, m.Starting):
        return {**doc, "screen": "progress", "line": _line("starting")}
    if isinstance(state, m.Purging):
        return {**doc, "screen": "progress", "line": _line("purging")}
    if isinstance(state, m.Idle):
        if not facts.clock_synced:  # nothing to tap for until network time comes
            return {**doc, "screen": "out-of-service", "line": _line("clock-unsynchronised")}
        if recent and shown.key not in ("idle", "starting", "purging", ""):  # its fields named the org
            return {**doc, "screen": "message", "line": _line(shown.key),
                    "idle_in_s": round(return_s - (now - shown.at))}
        return doc
    # a session: its org is on the screen
    org = state.org if isinstance(state, m.LookingUp) else state.s.org
    doc = {**doc, "session": state.session, "org": org, "line": _line(shown.key, shown.fields)}
    if isinstance(state, m.AwaitingPin):
        remaining = max(0.0, facts.limits.pin_timeout_s - (now - state.asked_at))
        return {**doc, "screen": "pin", "line": _line("enter-pin"),
                "pin": {"attempts_left": facts.attempts_left, "remaining_s": round(remaining),
                        "typed": facts.typed}}
    if not isinstance(state, m.Ready):
        return {**doc, "screen": "progress"}
    s = state.s
    if m.panel_fresh(s, now, facts.limits):
        user = s.panel_user
        own = [_job(j.job_id, facts.jobs.get(j.job_id, {})) for j in
               sorted((j for j in s.held if j.user == user), key=lambda j: (j.arrived_at, j.job_id))][:MAX_JOBS]
        printing = [{"id": job_id, "title": str(title or "")[:MAX_TITLE] or f"#{job_id}", "state": st}
                    for number, job_id, who, title, st in facts.printing
                    if number == s.number and who == user][:MAX_JOBS]
        screen = "jobs" if own else ("printing" if printing else "message")
        return {**doc, "screen": screen, "user": panel.mask_card(user), "jobs": own, "printing": printing,
                "idle_in_s": round(max(0.0, return_s - (now - s.panel_since)))}
    ready = "ready-combined" if s.policy.combined_mode else "ready"
    if shown.key in ("ready", "ready-combined", "choose-tap") or not recent:
        key = shown.key if shown.key == "choose-tap" and recent else ready
        return {**doc, "screen": "ready", "line": _line(key, (("org", org),)),
                "queue": queue_name(facts.local_id)}
    return {**doc, "screen": "message", "idle_in_s": round(return_s - (now - shown.at))}

