"""hal/panel/web_view: the firmware's screen document -> what the page displays (pure).

The page renders texts, it never picks or translates one: every line and label is made here,
through `firmware.panel` (the one place that knows the panel's keys and languages). A view holds
only what its screen shows: jobs on the jobs screen, the printing list on the printing screen, the
queue on the ready screen; idle, message, out-of-service and not-connected views name no user and
no job. Hostile strings (job titles) are passed through as data, stripped of control characters
and bounded; the page puts them in `textContent` only.

The view (JSON to the page):
    {"screen": "idle"|"progress"|"ready"|"pin"|"jobs"|"printing"|"message"|"out-of-service"
               |"not-connected",
     "lang": "en"|"ja", "session": int|null,
     "logged_in": bool,                             # a person is logged in at the panel (Log out)
     "line": str, "printer": str|null, "others": str|null, "idle_in_s": int|null,
     "labels": {name: template},                    # firmware.panel.LABELS in this language
     "queue": str|null,                             # ready
     "pin": {"attempts": str|null, "remaining_s": int|null, "typed": int},  # pin (typed: digits
                                                    # typed on a USB keypad, shown as dots)
     "jobs": [{"id": int, "title": str, "detail": str, "at": str}],        # jobs
     "printing": [{"id": int, "title": str, "state": str}]}                # printing
"""

from __future__ import annotations

from firmware import panel
from firmware.screen import SCREENS
NOT_CONNECTED = "not-connected"
MAX_TITLE = 120
MAX_ITEMS = 200
_FIELD_TYPES = (str, int, float)


def render(doc: dict | None, lang: str) -> dict:
    """The view of `doc` (None: the firmware is not there) in `lang`."""
    lang = panel.language(lang)
    view: dict = {"screen": NOT_CONNECTED, "lang": lang, "session": None,
                  "line": panel.label("not-connected", lang), "printer": None, "others": None,
                  "idle_in_s": None, "logged_in": False, "labels": panel.labels(lang)}
    if doc is None:
        return view
    screen = doc.get("screen")
    screen = screen if screen in SCREENS else "message"
    session = _int(doc.get("session"))
    view.update(screen=screen, session=session, line=_line(doc.get("line"), lang),
                idle_in_s=_int(doc.get("idle_in_s")),
                logged_in=session is not None and isinstance(doc.get("user"), str) and bool(doc["user"]))
    printer = doc.get("printer")
    if isinstance(printer, str) and printer:
        view["printer"] = panel.screen_text(printer, lang)
    others = _int(doc.get("others"))
    if others:
        view["others"] = panel.label("others", lang, n=others)
    if screen == "ready":
        queue = doc.get("queue")
        view["queue"] = panel.label("queue", lang, queue=_clean(queue)) if isinstance(queue, str) and queue else None
    elif screen == "pin":
        pin = doc.get("pin") if isinstance(doc.get("pin"), dict) else {}
        attempts = _int(pin.get("attempts_left"))
        view["pin"] = {"attempts": None if attempts is None else panel.label("attempts-left", lang, n=attempts),
                       "remaining_s": _int(pin.get("remaining_s")), "typed": _int(pin.get("typed")) or 0}
    elif screen == "jobs":
        view["jobs"] = [_job(j, lang) for j in _items(doc.get("jobs"))]
    elif screen == "printing":
        view["printing"] = [_printing(j, lang) for j in _items(doc.get("printing"))]
    return view


def _line(line: object, lang: str) -> str:
    if not isinstance(line, dict) or not isinstance(line.get("key"), str):
        return panel.screen_text("", lang)
    fields = line.get("fields") if isinstance(line.get("fields"), dict) else {}
    safe = {str(k): (_clean(v) if isinstance(v, str) else v)
            for k, v in fields.items() if isinstance(v, _FIELD_TYPES) and not isinstance(v, bool)}
    return panel.screen_text(line["key"], lang, **safe)


def _items(items: object) -> list[dict]:
    if not isinstance(items, list):
        return []
    return [i for i in items[:MAX_ITEMS] if isinstance(i, dict) and _int(i.get("id")) is not None]


def _job(job: dict, lang: str) -> dict:
    pages, size = _int(job.get("pages")), _int(job.get("size"))
    if pages is not None:
        detail = panel.label("page", lang) if pages == 1 else panel.label("pages", lang, n=pages)
    else:
        detail = size_text(size) if size is not None else ""
    at = job.get("at")
    return {"id": job["id"], "title": _clean(job.get("title")), "detail": detail,
            "at": _clean(at)[:16] if isinstance(at, str) else ""}


def _printing(job: dict, lang: str) -> dict:
    state = "job-printing" if job.get("state") == "printing" else "job-waiting"
    return {"id": job["id"], "title": _clean(job.get("title")), "state": panel.label(state, lang)}


def size_text(size: int) -> str:
    """A document size as the panel shows it: B, KB, MB (the same in every language)."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{round(size / 1024)} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def _clean(value: object) -> str:
    """A string as display data: control characters dropped, at most MAX_TITLE characters."""
    if not isinstance(value, str):
        return ""
    text = "".join(ch for ch in value if ch.isprintable() or ch == " ")
    return text if len(text) <= MAX_TITLE else text[: MAX_TITLE - 1] + "…"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
