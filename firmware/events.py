"""What happens to the session state machine: the events the runtime feeds to `machine.step`.

Every event carries `at`, monotonic seconds read by the runtime (the machine never reads a clock).
Events that answer an effect carry the `session` number of that effect (and `attempt` for
authentication): the machine drops an answer whose number is not the current one, so a late
result of an old session can never act on a new one.

No event carries an org secret. A card UID arrives only as `uid_tag` (the machine shows at most its
last four characters); a PIN only as a `Pin`, whose repr is masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Pin:
    """A PIN typed on the panel: ASCII digits in a bytearray, never a `str` (a str cannot be erased
    and lingers in the daemon's heap). Never shown by repr/str; `reveal()` for the one call that
    needs it, `wipe()` once it was handed on. Compared by identity: the machine never reads it."""

    __slots__ = ("_digits",)

    def __init__(self, digits: bytes | bytearray):
        if not isinstance(digits, (bytes, bytearray, memoryview)):
            raise TypeError("a Pin is made from bytes")
        object.__setattr__(self, "_digits", bytearray(digits))

    def reveal(self) -> bytearray:
        """The digits themselves (not a copy): do not keep them."""
        return self._digits

    def wipe(self) -> None:
        d = self._digits
        for i in range(len(d)):
            d[i] = 0
        del d[:]

    def __setattr__(self, name, value):
        raise AttributeError("Pin is immutable")

    def __repr__(self) -> str:
        return "Pin(****)"

    __str__ = __repr__


@dataclass(frozen=True)
class Policy:
    """The org's session policy (the non-secret part of the profile the machine needs)."""

    idle_timeout_s: float = 300.0
    max_hold_s: float = 3600.0
    combined_mode: bool = False
    end_after_print: bool = False  # end the session once nothing is held or printing after a print


# -- not session-scoped ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Boot:
    """The daemon started: whatever a crashed predecessor left must be purged first."""
    at: float


@dataclass(frozen=True)
class ClockChecked:
    """Whether the clock is synchronised to network time now (hal/clock). TLS and IKE check
    validity periods against it: no session opens while it is not."""
    at: float
    synchronised: bool


@dataclass(frozen=True)
class Tick:
    """Sent by the runtime about once a second: drives every timeout."""
    at: float


@dataclass(frozen=True)
class CardTapped:
    """A readable card: `user` and `org` ids from the card, `uid_tag` a masked tag of its UID."""
    at: float
    user: str
    org: str
    uid_tag: str = field(default="", repr=False)
    pin_locked: bool = False  # the device's PIN lockout holds this user now (see firmware/pin_guard.py)
    # the card's one-time proof for the org's server (a SUN message, hal.card.badge); "" if none
    proof: str = field(default="", repr=False)


@dataclass(frozen=True)
class CardUnreadable:
    """A tap that did not yield a user: kind is e.g. "unsupported", "read-error", "unknown-card"."""
    at: float
    kind: str


@dataclass(frozen=True)
class Shutdown:
    at: float


@dataclass(frozen=True)
class FaultCleared:
    """The operator says the fault was dealt with: purge again, and if that verifies, serve again."""
    at: float


# -- answers to effects (session-scoped) ----------------------------------------------------------

@dataclass(frozen=True)
class ProfileFetched:
    at: float
    session: int
    org: str
    remote_ts: tuple[str, ...]
    policy: Policy = Policy()
    device_networks: tuple[str, ...] = ()  # the device's own connected networks (no org's selector may overlap)


@dataclass(frozen=True)
class LookupFailed:
    """kind: "refused" (no contract), "device-rejected" (401), "unreachable", "malformed"."""
    at: float
    session: int
    kind: str


@dataclass(frozen=True)
class TunnelUp:
    at: float
    session: int
    virtual_ip: str
    remote_ts: tuple[str, ...]


@dataclass(frozen=True)
class TunnelFailed:
    at: float
    session: int
    reason: str = ""


@dataclass(frozen=True)
class TunnelDown:
    at: float
    session: int
    reason: str = ""


@dataclass(frozen=True)
class PrintServiceUp:
    at: float
    session: int


@dataclass(frozen=True)
class PrintServiceFailed:
    at: float
    session: int
    reason: str = ""


@dataclass(frozen=True)
class AuthAccepted:
    at: float
    session: int
    attempt: int
    user: str
    as_user: str = ""  # whose the card is, as the org's server says (a `card-...` id's owner)


@dataclass(frozen=True)
class AuthRejected:
    at: float
    session: int
    attempt: int
    user: str
    message: str = ""


@dataclass(frozen=True)
class AuthPinRequired:
    at: float
    session: int
    attempt: int
    user: str
    challenge: bytes = field(default=b"", repr=False)
    prompt: str = ""


@dataclass(frozen=True)
class AuthUnavailable:
    at: float
    session: int
    attempt: int
    reason: str = ""


@dataclass(frozen=True)
class PinEntered:
    at: float
    session: int
    pin: Pin


@dataclass(frozen=True)
class PinCancelled:
    at: float
    session: int


@dataclass(frozen=True)
class Released:
    at: float
    session: int
    job_ids: tuple[int, ...]


@dataclass(frozen=True)
class ReleaseFailed:
    at: float
    session: int
    job_ids: tuple[int, ...]
    reason: str = ""


@dataclass(frozen=True)
class JobArrived:
    """A job reached the session print service; `origin_ip` is the host it came from."""
    at: float
    session: int
    job_id: int
    user: str
    origin_ip: str
    proof: str = ""  # "ok" only when the desk's owner proof verified; else why not (hal/printer/job_proof.py)


@dataclass(frozen=True)
class JobPrinted:
    """The engine says a released job completed (the only way a job counts as printed)."""
    at: float
    session: int
    job_id: int


@dataclass(frozen=True)
class JobGone:
    """A held job left the queue some other way (cancelled at the desk PC, tampered with), or a
    released one ended at the engine without printing (aborted, canceled, engine unreachable)."""
    at: float
    session: int
    job_id: int
    reason: str = ""


# -- the person at the panel (hal/panel): only the authenticated person's own jobs ------------------

@dataclass(frozen=True)
class ChooseNext:
    """"Choose my jobs" on the panel: the next accepted tap (within `Limits.choose_armed_s`) shows
    the person's held jobs instead of releasing them all."""
    at: float
    session: int


@dataclass(frozen=True)
class JobsChosen:
    """Print these of the panel's authenticated person's held jobs (`job_ids` None: all of them)."""
    at: float
    session: int
    job_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class JobsDeleted:
    """Delete these of the panel's authenticated person's held jobs (cancelled here, reported to the
    desk as deleted by their owner: not delivered again)."""
    at: float
    session: int
    job_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class LoggedOut:
    """The person at the panel logged out (or walked away: the machine's own timeout does the same)."""
    at: float
    session: int


@dataclass(frozen=True)
class PurgeDone:
    """Result of `Purge`: ok only if the purge was verified; `leftovers` names what is left."""
    at: float
    session: int
    ok: bool
    leftovers: tuple[str, ...] = ()


Event = (Boot | Tick | CardTapped | CardUnreadable | Shutdown | FaultCleared | ProfileFetched
         | LookupFailed | TunnelUp | TunnelFailed | TunnelDown | PrintServiceUp | PrintServiceFailed
         | AuthAccepted | AuthRejected | AuthPinRequired | AuthUnavailable | PinEntered | PinCancelled
         | Released | ReleaseFailed | JobArrived | JobPrinted | JobGone | PurgeDone | ChooseNext | JobsChosen
         | JobsDeleted | LoggedOut)
