"""From a present card to its event, the same for every reader and tag type.

`card_event(uid, kind, reader, read)` runs `read()` (the tag type's bounded badge read) and says
what the tap was: a `CardTap` for a valid badge; a `CardUid` for a card that carries no badge
(no NDEF, an empty one, or another application's NDEF record) but has a stable UID; a
`CardUnreadable` for bad data or a card whose UID is random (ISO 14443-3 random UIDs start with
08; phones and many bank cards use them: such a card is known by nothing); None for a transient
communication error (the user taps again). With `uid_cards=False` (the PC/SC reader's default
until the firmware looks UIDs up) a card without a badge is `CardUnreadable` with its `NoBadge` /
`BadgeWrongType` error, as before `CardUid` existed.
"""

from __future__ import annotations

import logging
from typing import Callable

from hal.card import (BadgeWrongType, CardCommunicationError, CardDataError, CardTap, CardUid,
                      CardUnreadable, NoBadge, NoUid, mask_uid)
from hal.card.badge import Badge

log = logging.getLogger("tenantprint.card")

NO_BADGE = (NoBadge, BadgeWrongType)


def random_uid(uid: bytes) -> bool:
    """A 4-byte NFCID1 starting with 08 is random, chosen anew at each activation."""
    return len(uid) == 4 and uid[0] == 0x08


def uid_event(uid: bytes, kind: str, reader: str, detected_at: float = 0.0, *,
              uid_cards: bool = True, why: NoBadge | BadgeWrongType | None = None):
    """The event for a card known only by its UID."""
    if not uid_cards:
        return CardUnreadable(reader, why or NoBadge(f"a {kind} card without a badge"))
    if not uid:
        return CardUnreadable(reader, NoUid("the card has no badge and the reader gave no UID"))
    if random_uid(uid):
        return CardUnreadable(reader, NoUid("the card has no badge and a random UID"))
    log.info("card without badge on %s: %s uid %s", reader, kind, mask_uid(uid))
    return CardUid(uid, kind, reader, detected_at=detected_at)


def card_event(uid: bytes, kind: str, reader: str, read: Callable[[], Badge],
               detected_at: float = 0.0, *, uid_cards: bool = True):
    """The event for the card `read` reads (None on a transient communication error)."""
    try:
        badge = read()
    except NO_BADGE as exc:
        log.debug("no badge on %s: %s", reader, exc)
        return uid_event(uid, kind, reader, detected_at, uid_cards=uid_cards, why=exc)
    except CardDataError as exc:
        log.info("unreadable %s card on %s: %s: %s", kind, reader, type(exc).__name__, exc)
        return CardUnreadable(reader, exc)
    except CardCommunicationError as exc:
        log.warning("%s card %s on %s: %s (tap again)", kind, mask_uid(uid), reader, exc)
        return None
    log.info("tap on %s: %s uid %s org %s", reader, kind, mask_uid(uid), badge.org_id)
    return CardTap(uid, badge.user_id, badge.org_id, reader, detected_at=detected_at, kind=kind,
                   proof=badge.proof)
