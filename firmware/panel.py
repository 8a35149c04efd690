"""Every message the operation panel shows, in one place: a key -> a short line.

The machine (and nothing else) picks the key; `text(key, **fields)` renders it. Fields are
non-secret (org ids, user ids, counts, a server's reply message already made printable by
hal/auth). Unknown keys render a generic line rather than fail: the panel must always say something.

Languages (`LANGUAGES`): English is the source; every other language goes through the stdlib
`gettext` catalog `firmware/locale/<lang>/LC_MESSAGES/tenantprint.mo` (compiled from the `.po`
beside it, both committed), whose msgids are the English templates themselves. So:

- `text(key, lang="en", **fields)` is the line the machine, the status JSON and the journal use
  (English unless asked otherwise; a missing field leaves the template as it is);
- `screen_text(key, lang, **fields)` is the line the panel shows: when a field the template names
  is missing or empty it takes the key's name-less variant (`WITHOUT_NAMES`: "tunnel-down" with no
  org reads "Connection lost — session ended"), so after a purge a screen can say what happened
  without naming anyone;
- `label(name, lang, **fields)` / `labels(lang)` are the panel's own words (buttons, headings:
  `LABELS`), never a machine key.

An unknown language renders English. Placeholders are the same in every language (a unit test
checks them, and that every template has a translation).
"""

from __future__ import annotations

import functools
import gettext
import re
import string
from pathlib import Path

from hal.card import CARD_ID

LANGUAGES = ("en", "ja")
DOMAIN = "tenantprint"
LOCALE_DIR = Path(__file__).with_name("locale")
GENERIC = "Please wait"  # the line of an unknown key

MESSAGES: dict[str, str] = {
    # steady states
    "starting": "Starting — please wait",
    "idle": "Tap your card to start",
    "looking-up": "Looking up {org}…",
    "connecting": "Connecting to {org}…",
    "starting-print-service": "Preparing the printer for {org}…",
    "ready": "Ready for {org} — tap your card to release your jobs",
    "ready-combined": "Ready for {org} — your jobs print as they arrive",
    "authenticating": "Checking {user}…",
    "enter-pin": "Enter your PIN",
    "releasing": "Releasing {count} job(s) for {user}…",
    "purging": "Ending the session — please wait",
    "fault": "Out of service — call the operator",
    "stopped": "Switched off",
    # outcomes
    "released": "Released {count} job(s) for {user}",
    "no-jobs": "No jobs held for {user}",
    "release-failed": "Could not release the jobs — they stay held",
    "job-failed": "A job could not be printed — it goes back to its desk to print again",
    "reader-not-connected": "Card reader not connected — call the operator",
    # no network time yet (hal/clock): no session opens until the clock is synchronised
    "clock-unsynchronised": "Clock not synchronised — waiting for network time",
    # the printer (the engine): said beside the session's line while it lasts
    "printer-not-connected": "Printer not connected",
    "printer-offline": "Printer offline",
    "printer-jam": "Paper jam — call the operator",
    "printer-door-open": "Printer door open",
    "printer-tray-missing": "Paper tray missing",
    "printer-paper-out": "Paper out — load paper; held and released jobs wait",
    "printer-toner-empty": "Toner empty — call the operator",
    "printer-output-full": "Output tray full",
    "printer-paused": "Printer paused",
    "printer-toner-low": "Toner low",
    "printer-paper-low": "Paper low",
    # unknown, disabled, wrong-card and wrong-PIN users all read the same line (no user enumeration)
    "not-authorized": "Not authorized",
    "pin-locked": "Not authorized — too many wrong PINs, try again later",
    "auth-unavailable": "Authentication server unavailable — jobs stay held",
    "pin-cancelled": "PIN entry cancelled",
    "pin-timeout": "PIN entry timed out",
    # the person logged in at the panel
    "choose-tap": "Tap your card to see your jobs",
    "your-jobs": "{user}: choose jobs to print or delete",
    "jobs-deleted": "Deleted {count} job(s) for {user}",
    "in-use": "Printer in use by {org} — try again later",
    "busy": "Busy — please wait",
    "out-of-service": "Out of service — call the operator",
    "tunnel-failed": "Could not connect to {org}'s network",
    "virtual-ip-refused": "{org}'s network gave this printer an address it must not use — session ended",
    "tunnel-down": "Connection to {org} lost — session ended",
    "print-service-failed": "Printer could not be prepared for {org}",
    "step-timeout": "No answer in time — session ended",
    "idle-timeout": "Session for {org} ended (idle)",
    "printed-end": "Printed — session for {org} ended",
    "max-hold": "Held jobs expired — session for {org} ended",
    "switching-org": "Ending {org}'s session…",
    "sessions-full": "All sessions are busy — the first frees in {count} min",
    # card
    "card-unreadable": "Card could not be read — try again",
    "card-unsupported": "This card is not supported",
    "card-unknown": "Card not registered",
    # lookup
    "lookup-refused": "No contract for this organization",
    "lookup-device-rejected": "This printer is not enrolled — call the operator",
    "lookup-unreachable": "Directory unreachable — try again later",
    "lookup-malformed": "Directory sent an invalid profile — try again later",
    "lookup-failed": "Could not look up your organization",
    "internal-error": "Internal error — session ended",
}

# A key's line when the org or the user is not (or no longer) known: what the panel shows after a
# purge, when the name must not stay on screen, or when a field is missing.
WITHOUT_NAMES: dict[str, str] = {
    "looking-up": "Looking up your organization…",
    "connecting": "Connecting…",
    "starting-print-service": "Preparing the printer…",
    "ready": "Ready — tap your card to release your jobs",
    "ready-combined": "Ready — your jobs print as they arrive",
    "authenticating": "Checking…",
    "releasing": "Releasing {count} job(s)…",
    "released": "Released {count} job(s)",
    "no-jobs": "No jobs held for you",
    "in-use": "Printer in use — try again later",
    "tunnel-failed": "Could not connect to the organization's network",
    "virtual-ip-refused": "The network gave this printer an address it must not use — session ended",
    "tunnel-down": "Connection lost — session ended",
    "print-service-failed": "Printer could not be prepared",
    "idle-timeout": "Session ended (idle)",
    "printed-end": "Printed — session ended",
    "max-hold": "Held jobs expired — session ended",
    "switching-org": "Ending the session…",
    "sessions-full": "All sessions are busy — try again later",
    "your-jobs": "Choose jobs to print or delete",
    "jobs-deleted": "Deleted {count} job(s)",
}

# ... and when even the count is gone (an outcome shown once the session was purged).
WITHOUT_FIELDS: dict[str, str] = {
    "releasing": "Releasing your jobs…",
    "released": "Your jobs were released",
    "jobs-deleted": "Jobs deleted",
}

# The panel's own words: buttons, headings, hints. Never picked by the machine.
LABELS: dict[str, str] = {
    "print-selected": "Print selected",
    "print-all": "Print all",
    "delete-selected": "Delete selected",
    "logout": "Log out",
    "choose": "Choose my jobs",
    "cancel": "Cancel",
    "ok": "OK",
    "back": "Delete last digit",
    "tap-card": "Tap your card",
    "attempts-left": "Attempts left: {n}",
    "remaining": "Time left: {s} s",
    "page": "1 page",
    "pages": "{n} pages",
    "others": "Other organizations using the printer: {n}",
    "queue": "Printer name on your computer: {queue}",
    "jobs-heading": "Your held jobs",
    "no-held-jobs": "No held jobs",
    "printing-heading": "Your jobs",
    "job-waiting": "Waiting",
    "job-printing": "Printing",
    "idle-in": "Back to the start in {s} s",
    "not-connected": "Panel not connected — waiting for the printer",
    "language": "Language",
    "pin-entered": "Digits entered: {n}",
}

CARD_KEYS = {"unsupported": "card-unsupported", "unknown-card": "card-unknown",
             "card-directory-unreachable": "lookup-unreachable"}
LOOKUP_KEYS = {
    "refused": "lookup-refused",
    "device-rejected": "lookup-device-rejected",
    "unreachable": "lookup-unreachable",
    "malformed": "lookup-malformed",
}

MAX_LEN = 120


_CARD = re.compile(CARD_ID.pattern.strip("^$"))  # a card id anywhere in a line


def mask_card(value: object) -> object:
    """A card id (`card-<uid>`, a card known only by its UID) as `card-…` and its last 4 digits;
    anything else as it is. UIDs are never shown or logged in full."""
    if isinstance(value, str) and "card-" in value:
        return _CARD.sub(lambda m: f"card-…{m.group(0)[-4:]}", value)
    return value


def text(key: str, lang: str = "en", **fields: object) -> str:
    """The panel line for `key` in `lang`, at most MAX_LEN characters (card ids masked)."""
    template = translate(MESSAGES.get(key, GENERIC), lang)
    try:
        line = template.format(**{k: mask_card(v) for k, v in fields.items()})
    except (KeyError, IndexError, ValueError):
        line = template
    return _clip(line)


def screen_text(key: str, lang: str, **fields: object) -> str:
    """The panel's line for `key` in `lang`: like `text`, but a template naming a field that is
    missing or empty (None, "") gives way to the key's name-less variant (`WITHOUT_NAMES`), then
    to its field-less one (`WITHOUT_FIELDS`), and when none can be filled, to the generic line. Never shows a bare `{placeholder}`."""
    present = {k: v for k, v in fields.items() if v is not None and v != ""}
    for template in (MESSAGES.get(key), WITHOUT_NAMES.get(key), WITHOUT_FIELDS.get(key)):
        if template is not None:
            line = _fill(translate(template, lang), present)
            if line is not None:
                return _clip(line)
    return translate(GENERIC, lang)


def label(name: str, lang: str, **fields: object) -> str:
    """One of the panel's own words (`LABELS`) in `lang`, its fields filled in."""
    template = translate(LABELS.get(name, ""), lang)
    line = _fill(template, fields)
    return _clip(line if line is not None else template)


def labels(lang: str) -> dict[str, str]:
    """Every panel label in `lang`, as templates (placeholders such as `{s}` left for the page)."""
    return {name: translate(template, lang) for name, template in LABELS.items()}


def language(lang: object) -> str:
    """`lang` when the panel speaks it, English otherwise."""
    return lang if isinstance(lang, str) and lang in LANGUAGES else "en"


def translate(template: str, lang: str) -> str:
    """An English template in `lang` (the template itself when the catalog lacks it)."""
    if not template:
        return template
    return _catalog(language(lang)).gettext(template)


@functools.lru_cache(maxsize=None)
def _catalog(lang: str) -> gettext.NullTranslations:
    if lang == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, localedir=LOCALE_DIR, languages=[lang], fallback=True)


def placeholders(template: str) -> set[str]:
    """The field names a template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _fill(template: str, fields: dict[str, object]) -> str | None:
    """The template filled in, or None when it names a field that is not there."""
    if not placeholders(template) <= fields.keys():
        return None
    try:
        return template.format(**{k: mask_card(v) for k, v in fields.items()})
    except (KeyError, IndexError, ValueError):
        return None


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LEN else line[: MAX_LEN - 1] + "…"


def with_printer(line: str, condition: str) -> str:
    """The panel line with the printer's condition (a `printer-*` key) before it, when there is one."""
    if not condition:
        return line
    said = text(condition)
    return said if not line or line == said else text_join(said, line)


def text_join(first: str, second: str) -> str:
    line = f"{first} · {second}"
    return line if len(line) <= MAX_LEN else line[: MAX_LEN - 1] + "…"


def card_key(kind: str) -> str:
    return CARD_KEYS.get(kind, "card-unreadable")


def lookup_key(kind: str) -> str:
    return LOOKUP_KEYS.get(kind, "lookup-failed")


def mask_tag(uid_tag: str) -> str:
    """At most the last four characters of a card tag: enough to tell cards apart in a journal."""
    tail = "".join(ch for ch in str(uid_tag)[-4:] if ch.isalnum())
    return f"…{tail}" if tail else "…"
