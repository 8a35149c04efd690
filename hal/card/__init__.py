"""hal/card: the card reader.

A reader yields `CardEvent`s: a `CardTap` when a card carrying a valid tenantprint badge is
presented, `CardUnreadable` when a card is present but its data is not a valid badge (the panel
says so), `CardRemoved` when the card leaves. Card data and UIDs are unauthenticated and clonable:
a tap *identifies* a user; the org's auth server authenticates.

Implementations (chosen by name with `open_reader`): `pcsc` (pyscard over pcscd: PC/SC readers
such as ACR1252U, and the lab's virtual card behind vpcd) and `nfcpy` (ACR122U/PN533 driven
directly). The on-card format lives in `hal.card.badge`; the Type 4 read in `hal.card.type4`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import AsyncIterator, Union


def mask_uid(uid: bytes) -> str:
    """A UID for logs and reprs: only its last 2 bytes are shown."""
    if len(uid) <= 2:
        return "*" * (2 * len(uid))
    return "*" * (2 * (len(uid) - 2)) + uid[-2:].hex()


# -- errors -----------------------------------------------------------------------------------

class CardError(Exception):
    """Anything that went wrong with a reader or a card."""


class ReaderUnavailable(CardError):
    """The reader (or the service behind it) cannot be used at all: a permanent failure."""


class CardCommunicationError(CardError):
    """Talking to a present card failed (removed mid-read, transmit error): try the tap again."""


class CardDataError(CardError):
    """A card was read but does not carry a valid badge. Subclasses say why."""


class NoBadge(CardDataError):
    """The card has no NDEF application, or an empty NDEF file."""


class NoUid(CardDataError):
    """The reader could not get the card's UID."""


class BadgeTooLong(CardDataError):
    """The card claims an NDEF message longer than the tag allows or than a badge can be."""


class BadgeMalformed(CardDataError):
    """The tag structure (CC file, NDEF file, NDEF record) or the badge JSON is not well formed."""


class BadCapabilityContainer(BadgeMalformed):
    """The Type 4 capability container (file E103) is invalid."""


class BadgeWrongType(CardDataError):
    """The NDEF record is not an `application/vnd.tenantprint.badge+json` MIME record."""


class BadgeUnsupportedVersion(CardDataError):
    """The badge's `v` is not a version this firmware reads."""


class BadgeBadFields(CardDataError):
    """The badge JSON does not have exactly the keys v, u, o."""


class BadgeInvalidId(CardDataError):
    """A user or org id does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$."""


# -- events -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CardTap:
    """A card with a valid badge was presented. `detected_at` is the `time.monotonic()` of the
    reader's card-present status change (for latency measurement; 0.0 if unknown)."""
    uid: bytes
    user_id: str
    org_id: str
    reader: str
    detected_at: float = field(default=0.0, compare=False)

    def __repr__(self) -> str:
        return (f"CardTap(uid={mask_uid(self.uid)}, user_id={self.user_id!r}, "
                f"org_id={self.org_id!r}, reader={self.reader!r})")


@dataclass(frozen=True)
class CardRemoved:
    reader: str


@dataclass(frozen=True)
class CardUnreadable:
    """A card was present but its data was bad; `error` says how (show it on the panel)."""
    reader: str
    error: CardDataError

    def __repr__(self) -> str:
        return f"CardUnreadable(reader={self.reader!r}, error={type(self.error).__name__}: {self.error})"


CardEvent = Union[CardTap, CardRemoved, CardUnreadable]


# -- interface --------------------------------------------------------------------------------

class CardReader(abc.ABC):
    """One card reader (or every reader a PC/SC filter matches)."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[CardEvent]:
        """Yield taps, removals and unreadable cards, forever.

        Survives the reader service restarting (pcscd) and readers coming and going; a transient
        communication error with a card yields nothing (the user taps again) and is logged.
        Raises `ReaderUnavailable` only for a permanent failure. Call it once per reader.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching; `events()` ends. Idempotent."""


def open_reader(kind: str, **options) -> CardReader:
    """The reader implementation named `kind` (`pcsc` or `nfcpy`) with its options.

    pcsc: `reader_filter` (substring of the PC/SC reader name; default: every reader).
    nfcpy: `path` (nfcpy device path, e.g. `usb:072f:2200`, `udp:localhost:54321`).
    """
    if kind == "pcsc":
        from hal.card.pcsc import PcscReader
        return PcscReader(**options)
    if kind == "nfcpy":
        from hal.card.nfc_reader import NfcpyReader
        return NfcpyReader(**options)
    raise ValueError(f"unknown card reader kind {kind!r} (known: pcsc, nfcpy)")
