"""hal/card: the card reader.

A reader yields `CardEvent`s: a `CardTap` when a card carrying a valid tenantprint badge is
presented, `CardUid` when a card carries no badge but has a stable UID/IDm (a staff or FeliCa card
the org registered by its UID: the firmware looks it up), `CardUnreadable` when a card is present
but its data is not a valid badge (the panel says so), `CardRemoved` when the card leaves. Card data
and UIDs are unauthenticated and clonable: a tap *identifies* a user; the org's auth server
authenticates (a UID-only card always needs a PIN).

Badges are read from NFC Forum Type 2 (`hal.card.type2`: NTAG21x, Ultralight), Type 3
(`hal.card.type3`: FeliCa Lite-S) and Type 4 (`hal.card.type4`) tags; `hal.card.badge_write` makes
the images a writer puts on them. `CardReader.reader_state()` says whether the reader is usable and,
when it is not, why.

Implementations (chosen by name with `open_reader`): `pcsc` (pyscard over pcscd: PC/SC readers
such as ACR1252U, and the lab's virtual card behind vpcd) and `nfcpy` (ACR122U/PN533 driven
directly). The on-card format lives in `hal.card.badge`.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import AsyncIterator, Union


# A card known only by its UID: `card-` and the UID in lowercase hex (NFC/FeliCa IDm) or the digits a
# keyboard-wedge reader typed. Not a secret, but never logged in full.
CARD_ID = re.compile(r"^card-[0-9a-f]{4,40}$")


def card_id(uid: bytes, kind: str) -> str | None:
    """The id a card known only by its UID goes by (the cloud's card directory, the org's auth
    server): `card-<uid in hex>`, or `card-<the number>` for a wedge reader's (its UID is the
    typed number). None when it cannot be one (too short, too long, not hex digits)."""
    try:
        tail = uid.decode("ascii").lower() if kind == "wedge" else uid.hex()
    except UnicodeDecodeError:
        return None
    ident = f"card-{tail}"
    return ident if CARD_ID.fullmatch(ident) else None


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
    """The capability container (Type 4: file E103; Type 2: page 3) is invalid."""


class BadAttributeBlock(BadgeMalformed):
    """The Type 3 attribute information block (block 0 of the NDEF service) is invalid."""


class TagRefusedRead(BadgeMalformed):
    """The tag answered a read with an error (a NAK, a FeliCa status flag): the block or page does
    not exist or is protected. Raised by the read functions given to `type2` / `type3`."""


class BadgeWrongType(CardDataError):
    """The NDEF record is not an `application/vnd.tenantprint.badge+json` MIME record."""


class BadgeUnsupportedVersion(CardDataError):
    """The badge's `v` is not a version this firmware reads."""


class BadgeBadFields(CardDataError):
    """The badge JSON does not have exactly the keys of its version (v, u, o; v2 adds e, c)."""


class BadgeInvalidId(CardDataError):
    """A user or org id does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$."""


# -- events -----------------------------------------------------------------------------------

# What a card is, as the readers tell it (`CardTap.kind`, `CardUid.kind`).
KIND_TYPE2 = "type2"          # NFC Forum Type 2: NTAG21x, MIFARE Ultralight
KIND_TYPE3 = "type3"          # NFC Forum Type 3 / FeliCa (the UID is the IDm)
KIND_TYPE4 = "type4"          # ISO 14443-4: NFC Forum Type 4, DESFire, bank and ID cards
KIND_MIFARE_CLASSIC = "mifare-classic"
KIND_UNKNOWN = "unknown"


@dataclass(frozen=True)
class CardTap:
    """A card with a valid badge was presented. `detected_at` is the `time.monotonic()` of the
    reader's card-present status change (for latency measurement; 0.0 if unknown); `kind` is one of
    the `KIND_*` names ("" if the reader does not say)."""
    uid: bytes
    user_id: str
    org_id: str
    reader: str
    detected_at: float = field(default=0.0, compare=False)
    kind: str = field(default="", compare=False)
    # the card's proof for its org's server (a version 2 badge's SUN message, `hal.card.badge`);
    # "" when the card has none
    proof: str = field(default="", compare=False)

    def __repr__(self) -> str:
        return (f"CardTap(uid={mask_uid(self.uid)}, user_id={self.user_id!r}, "
                f"org_id={self.org_id!r}, reader={self.reader!r})")


@dataclass(frozen=True)
class CardUid:
    """A card without a badge but with a stable UID (or FeliCa IDm): it can only be known by that
    UID, which the firmware looks up (a registered UID-only card always asks for the PIN)."""
    uid: bytes
    kind: str
    reader: str
    detected_at: float = field(default=0.0, compare=False)

    def __repr__(self) -> str:
        return f"CardUid(uid={mask_uid(self.uid)}, kind={self.kind!r}, reader={self.reader!r})"


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


CardEvent = Union[CardTap, CardUid, CardRemoved, CardUnreadable]


# -- interface --------------------------------------------------------------------------------

class CardReader(abc.ABC):
    """One card reader (or every reader a PC/SC filter matches)."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[CardEvent]:
        """Yield taps, removals and unreadable cards, forever.

        Survives the reader service restarting (pcscd) and readers coming and going; a transient
        communication error with a card yields nothing (the user taps again) and is logged.
        Raises `ReaderUnavailable` only for a failure it does not retry by itself; it may then be
        iterated again (one iteration at a time).
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching; `events()` ends. Idempotent."""

    def reader_state(self) -> dict:
        """{"connected": bool, "problem": str}: whether the reader can be used now and, if not,
        why ("" when unknown or when connected). For the status and the panel."""
        return {"connected": True, "problem": ""}

    @property
    def state(self) -> dict:
        return self.reader_state()


def open_reader(kind: str, **options) -> CardReader:
    """The reader implementation named `kind` (`pcsc`, `nfcpy` or `wedge`) with its options.

    pcsc: `reader_filter` (substring of the PC/SC reader name; default: every reader).
    nfcpy: `path` (nfcpy device path, e.g. `usb:072f:2200`, `udp:localhost:54321`), `retry_s`,
    `retry_max_s` (backoff while the device cannot be opened).
    wedge: `device` (input device path, e.g. /dev/input/by-id/...-event-kbd) or `name` (part of its
    evdev name), `hex_digits`, `min_len`, `max_len`, `max_gap_ms` (`hal.card.wedge`).
    """
    if kind == "pcsc":
        from hal.card.pcsc import PcscReader
        return PcscReader(**options)
    if kind == "nfcpy":
        from hal.card.nfc_reader import NfcpyReader
        return NfcpyReader(**options)
    if kind == "wedge":
        from hal.card.wedge import WedgeReader
        return WedgeReader(**options)
    raise ValueError(f"unknown card reader kind {kind!r} (known: pcsc, nfcpy, wedge)")
