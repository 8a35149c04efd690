"""The desk's holding queue: every job the desk delivered waits there until the org knows what became
of it ("No job is lost", issue 14). Pure: names, the copy's attributes, and the decision.

When the MFP takes a job, the desk backend (org/desk_backend.py) puts a copy of it (same user, title
and the exact document it sent, raw) into the desk CUPS's queue `tenantprint-held`, held. The desk
agent (org/desk_keeper.py) then follows what the MFPs report through the org's gateway agent
(org/gateway_agent.py, by delivery id) and the MFP listing, and `plan()` says what to do with each
copy:

- `printed` (the MFP's engine completed it) or `deleted` (its owner deleted it at the MFP): the
  copy is dropped (purged: it was never the user's job, only its safety copy);
- `released` (its owner released it: it is in the MFP's engine, not yet printed): the copy is kept
  while that session is listed, and delivered again once it is over (the MFP then says how the job
  ended: a job it released before is never printed twice, only reported again);
- `failed` (the engine aborted it, or never took it): the copy is delivered again at once to a
  ready MFP of the org, even into the session that still lists it, so its owner can print it again.
  The keeper consumes that report (`redelivered`, a state of the desk's own), so one failure is one
  redelivery;
- `expired` (the org's max hold ended it): the copy is cancelled with a reason the desk user sees
  (`job-printer-state-message`, `lpstat -l`);
- no outcome and its session over (the MFP it went to is no longer listed, or listed in another
  session): it is moved to the queue of an MFP of the org that is listed and ready, and released
  there, so the backend delivers it again, under its delivery id. A copy whose session is still
  listed is never delivered again;
- older than `MAX_AGE_S` since its first delivery: cancelled with a reason.

The copy's attributes (text, job group; none may contain white space: Debian 12's cupsd 2.4.2
crashes at the start of a job that carries a custom text attribute with a space in it, measured
here, a heap overflow in its options string fixed upstream in 2026):

- `tenantprint-delivery`: `<delivery id>/<MFP id>`, the MFP id (its IKE identity, as the gateway
  lists it, or its virtual IP when it has none) percent-encoded;
- `tenantprint-delivery-session`: the session of that MFP it was delivered in (the listing's
  `session`; absent when unknown: then the copy's session counts as over once its MFP is not listed);
- `tenantprint-document-format`: the format it was sent in (the copy itself is raw);
- `tenantprint-delivery-tag`: `<first delivery, unix seconds>.<MAC>`, an HMAC under a key derived
  from the desk key over org, user, title, delivery id, first delivery and format. The backend signs
  a job with the delivery id it carries only when the tag verifies: a desk user cannot give their job
  a colleague's delivery id (`-o tenantprint-delivery=...`) to have the MFP take it for that
  colleague's already released job, or have the colleague's copy dropped.

How the backend sees them: CUPS passes a job's attributes to its filters and backend as the options
argument (argv[5], `name=value` separated by spaces, backslash-escaped), text attributes of the job
group included; `parse_job_options` reads it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

HELD_QUEUE = "tenantprint-held"
# A URI of our own backend that can never send: the backend refuses it first thing (exit "stop the
# queue"), and neither is its host an address literal (desk_backend.mfp_address refuses any name)
# nor could `.invalid` ever resolve (RFC 2606). `file:` is refused by cupsd (FileDevice No), and any
# other backend's URI would print somewhere if the queue were ever started.
HELD_DEVICE_URI = "tenantprint://hold.invalid/never-sends"
DELIVERY_ATTRIBUTE = "tenantprint-delivery"
SESSION_ATTRIBUTE = "tenantprint-delivery-session"
FORMAT_ATTRIBUTE = "tenantprint-document-format"
TAG_ATTRIBUTE = "tenantprint-delivery-tag"
MAX_AGE_S = 24 * 3600.0
OUTCOME_STATES = ("released", "printed", "failed", "deleted", "expired")  # what an MFP reports (org/gateway_agent.py)
REDELIVERED = "redelivered"  # the desk's own: a `failed` report it acted on
EXPIRED_REASON = "expired at the printer: the organization's hold time ended before its owner released it"
DELETED_REASON = "deleted by its owner at the printer"
TOO_OLD_REASON = "not printed within 24 hours of its delivery: cancelled by the desk"
KEPT_MESSAGE = "kept by this desk until the shared printer reports what became of it"

_DELIVERY = re.compile(r"[0-9a-f]{32}")
_SESSION = re.compile(r"[0-9a-f]{1,64}")
MFP_ID = re.compile(r"[!-~][ -~]{0,254}")  # an IKE identity or an address: printable ASCII
_TAG = re.compile(r"([0-9]{1,12})\.([0-9a-f]{32})")
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")
_TAG_DOMAIN = b"tenantprint-delivery-tag/v1\0"


@dataclass(frozen=True)
class DeliveryNote:
    """Which delivery a copy is, and to which MFP it went."""

    delivery: str
    mfp: str

    def __post_init__(self):
        if not _DELIVERY.fullmatch(self.delivery) or not MFP_ID.fullmatch(self.mfp):
            raise ValueError("delivery note: a 32-hex delivery id and a printable MFP id")

    @property
    def value(self) -> str:
        return f"{self.delivery}/{quote(self.mfp, safe='')}"

    @classmethod
    def parse(cls, value: object) -> "DeliveryNote | None":
        if not isinstance(value, str) or len(value) > 1024 or "/" not in value:
            return None
        delivery, _, encoded = value.partition("/")
        try:
            note = cls(delivery, unquote(encoded, errors="strict"))
        except (ValueError, UnicodeDecodeError):
            return None
        return note if note.value == value else None  # one spelling only


def valid_session(value: object) -> str | None:
    return value if isinstance(value, str) and _SESSION.fullmatch(value) else None


def tag_first(value: object) -> int | None:
    """The first-delivery time a tag names (unchecked: for the agent's age limit only)."""
    m = _TAG.fullmatch(value) if isinstance(value, str) else None
    return int(m.group(1)) if m else None


def valid_format(value: object) -> str | None:
    return value if isinstance(value, str) and _MIME.fullmatch(value) else None


def tag_key(private_key) -> bytes:
    """The key of the copies' tags, derived from the desk's Ed25519 key (root-only on the desk)."""
    from cryptography.hazmat.primitives import serialization

    raw = private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    return hashlib.sha256(_TAG_DOMAIN + raw).digest()


def _mac(key: bytes, *, org: str, user: str, title: str, delivery: str, first: int, document_format: str) -> str:
    fields = [org, user, title, delivery, str(int(first)), document_format]
    message = b"\0".join(f.encode("utf-8", "surrogatepass") for f in fields)
    return hmac.new(key, _TAG_DOMAIN + message, hashlib.sha256).hexdigest()[:32]


def delivery_tag(key: bytes, *, org: str, user: str, title: str, delivery: str, first: int,
                 document_format: str) -> str:
    if not 0 <= int(first) < 10**12:
        raise ValueError("first: out of range")
    mac = _mac(key, org=org, user=user, title=title, delivery=delivery, first=first, document_format=document_format)
    return f"{int(first)}.{mac}"


@dataclass(frozen=True)
class Redelivery:
    """A job the desk delivered before, back for another delivery (its tag verified)."""

    note: DeliveryNote
    first: int  # unix seconds of its first delivery
    document_format: str


def redelivery(options: dict[str, str], key: bytes, *, org: str, user: str, title: str) -> Redelivery | None:
    """Pure: the delivery a job's options name, when this desk made them for this job (org, user,
    title); None for a fresh job, or for options a user added (`-o tenantprint-delivery=...`)."""
    note = DeliveryNote.parse(options.get(DELIVERY_ATTRIBUTE))
    fmt = valid_format(options.get(FORMAT_ATTRIBUTE))
    tag = _TAG.fullmatch(options.get(TAG_ATTRIBUTE, ""))
    if note is None or fmt is None or tag is None:
        return None
    first = int(tag.group(1))
    want = _mac(key, org=org, user=user, title=title, delivery=note.delivery, first=first, document_format=fmt)
    if not hmac.compare_digest(want, tag.group(2)):
        return None
    return Redelivery(note, first, fmt)


def copy_attributes(note: DeliveryNote, session: str | None, tag: str, document_format: str) -> dict[str, str]:
    """The text attributes a copy carries (none with white space: see the module docstring)."""
    out = {DELIVERY_ATTRIBUTE: note.value, FORMAT_ATTRIBUTE: document_format, TAG_ATTRIBUTE: tag}
    if valid_session(session):
        out[SESSION_ATTRIBUTE] = session
    return out


def parse_job_options(options: str) -> dict[str, str]:
    """Pure: CUPS's options argument (`name=value` pairs, backslash escapes, quotes) as a dict; a
    boolean option appears as `name` or `noname` and is left out. Unparsable: {}."""
    try:
        words = shlex.split(options or "", posix=True)
    except ValueError:
        return {}
    return dict(w.split("=", 1) for w in words if "=" in w)


@dataclass(frozen=True)
class HeldCopy:
    """A job in the holding queue, as the desk CUPS lists it."""

    job_id: int
    user: str
    title: str
    note: DeliveryNote | None  # None: a job never delivered (moved here from an MFP queue that went)
    session: str | None
    first: float  # its first delivery (from its tag), else when the desk CUPS took it
    processed: bool = False  # a backend ran for it once (see desk_cups.DeskCups.cancel)
    held: bool = True  # job-state held (a job moved here while its backend ran may come out pending)


@dataclass
class Plan:
    drop: list[int] = field(default_factory=list)
    cancel: list[tuple[int, str]] = field(default_factory=list)
    redeliver: list[tuple[int, str]] = field(default_factory=list)  # (job, MFP queue)
    hold: list[int] = field(default_factory=list)  # kept, but not held: hold it (the queue is stopped too)


def plan(copies: list[HeldCopy], listing: dict[str, str], ready: dict[str, str], outcomes: dict[str, str],
         now: float, max_age_s: float = MAX_AGE_S) -> Plan:
    """Pure: what to do with the holding queue's copies.

    `listing`: the org's MFPs listed now, MFP id -> its session (as in the copies' notes);
    `ready`: MFP id -> the name of its desk queue, for the MFPs whose queue is added and trusted;
    `outcomes`: delivery id -> an OUTCOME_STATES state as the MFPs reported it, or `redelivered`."""
    out = Plan()
    target = None
    if ready:
        target = ready[min(ready)]
    for c in copies:
        state = outcomes.get(c.note.delivery) if c.note else None
        if state == "printed":
            out.drop.append(c.job_id)
        elif state == "deleted":  # cancelled, not dropped: the desk's user sees what became of it
            out.cancel.append((c.job_id, DELETED_REASON))
        elif state == "failed" and target is not None:
            out.redeliver.append((c.job_id, ready.get(c.note.mfp, target)))
        elif state == "expired":
            out.cancel.append((c.job_id, EXPIRED_REASON))
        elif now - c.first > max_age_s:
            out.cancel.append((c.job_id, TOO_OLD_REASON))
        elif target is not None and not (c.note is not None and c.note.mfp in listing and (
                c.session is None or listing[c.note.mfp] == c.session)):  # its session does not hold it
            # back to the MFP it came from when that one is ready again, else to any of the org's
            queue = ready.get(c.note.mfp, target) if c.note else target
            out.redeliver.append((c.job_id, queue))
        elif not c.held:
            out.hold.append(c.job_id)
    return out
