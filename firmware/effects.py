"""What the session state machine asks the runtime to do: effects, executed in list order.

Each effect that has a result names the `session` it belongs to (and `attempt` for
authentication); the runtime answers with the matching event from `firmware.events` carrying the
same numbers. `ShowPanel` and `Audit` have no answer.

No effect carries an org secret: the runtime looks the secrets up in the `SessionProfile` it holds
for `session`. The one sensitive value, the PIN in `Authenticate`, is a masked `Pin`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from firmware.events import Pin


@dataclass(frozen=True)
class FetchProfile:
    """Ask the directory for `org`'s session profile -> ProfileFetched | LookupFailed. Nothing else:
    while another org's session serves, this is the lookup that decides whether to switch."""
    session: int
    org: str


@dataclass(frozen=True)
class PreparePrintService:
    """Start the session print service (tmpfs, session cupsd) now, beside the lookup and IKE: it
    needs nothing of the org. No answer of its own: StartPrintService waits for it; Purge stops it."""
    session: int


@dataclass(frozen=True)
class EndLookup:
    """A lookup made while another session served will not become a session (it failed, or its
    profile was refused): end the process that made it, and whatever it fetched with it."""
    session: int


@dataclass(frozen=True)
class PinFailed:
    """A wrong PIN for `user` of `org`: count it against the device's PIN lockout (no answer)."""
    org: str
    user: str


@dataclass(frozen=True)
class PinAccepted:
    """The right PIN for `user` of `org`: that user's wrong-PIN count starts again (no answer)."""
    org: str
    user: str


@dataclass(frozen=True)
class BringUpTunnel:
    """Load the held profile into charon and initiate -> TunnelUp | TunnelFailed (later TunnelDown)."""
    session: int
    org: str


@dataclass(frozen=True)
class StartPrintService:
    """Have the session print service (started at FetchProfile) up -> PrintServiceUp | PrintServiceFailed."""
    session: int
    virtual_ip: str


@dataclass(frozen=True)
class Authenticate:
    """Ask the org's auth server -> AuthAccepted | AuthRejected | AuthPinRequired | AuthUnavailable."""
    session: int
    attempt: int
    user: str
    org: str
    pin: Pin | None = None
    state: bytes | None = field(default=None, repr=False)  # the server's challenge, when answering it
    proof: str = field(default="", repr=False)  # the tap's card proof, forwarded unchanged (first request only)


@dataclass(frozen=True)
class AskPin:
    """Ask the panel for a PIN -> PinEntered | PinCancelled."""
    session: int
    user: str
    prompt: str = ""


@dataclass(frozen=True)
class ReleaseJobs:
    """Move these held jobs (oldest first) to the engine -> Released | ReleaseFailed."""
    session: int
    user: str
    job_ids: tuple[int, ...]


@dataclass(frozen=True)
class ReportJobs:
    """Tell the org's desks what became of these jobs (firmware/outcomes.py): "released",
    "deleted" or "expired". No answer; a report that fails is journalled (the desk then delivers
    the job again, and the device's record of released jobs refuses it)."""
    session: int
    state: str
    job_ids: tuple[int, ...]


@dataclass(frozen=True)
class PurgeJob:
    """Cancel and delete one job from the session spool (no answer; JobGone may follow)."""
    session: int
    job_id: int
    reason: str


@dataclass(frozen=True)
class Purge:
    """Remove every trace of the session (or of a crashed one), then verify -> PurgeDone.
    `keep_next`: a lookup of another org already made (the switch it decided) survives the purge;
    otherwise any such lookup ends with it."""
    session: int
    reason: str
    keep_next: bool = False


@dataclass(frozen=True)
class StartSpareKeeper:
    """Start the next session's secret keeper now, if there is none (it holds nothing until a
    lookup takes it): off the tap's path, after a purge or an abandoned lookup."""


@dataclass(frozen=True)
class ShowPanel:
    """The panel's line: `message` rendered in English (status, journal) from `key` and `fields`
    (the panel renders them in its own language: firmware/panel.py)."""
    message: str
    key: str = ""
    fields: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Audit:
    """A journal record: `event` plus non-secret fields (masked card tags, never PINs)."""
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


Effect = (FetchProfile | PreparePrintService | EndLookup | BringUpTunnel | StartPrintService
          | Authenticate | AskPin | ReleaseJobs | ReportJobs | PurgeJob | Purge | StartSpareKeeper | PinFailed | PinAccepted
          | ShowPanel | Audit)
