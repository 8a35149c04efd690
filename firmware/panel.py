"""Every message the operation panel shows, in one place: a key -> a short line.

The machine (and nothing else) picks the key; `text(key, **fields)` renders it. Fields are
non-secret (org ids, user ids, counts, a server's reply message already made printable by
hal/auth). Unknown keys render a generic line rather than fail: the panel must always say something.
"""

from __future__ import annotations

import re

from hal.card import CARD_ID

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


def text(key: str, **fields: object) -> str:
    """The panel line for `key`, at most MAX_LEN characters (card ids masked)."""
    template = MESSAGES.get(key, "Please wait")
    try:
        line = template.format(**{k: mask_card(v) for k, v in fields.items()})
    except (KeyError, IndexError, ValueError):
        line = template
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
