"""The lab's issued NTAG 424 DNA cards: every lab user (not a `card-<uid>` card, not disabled) has
one, with keys only their org's auth server and the card know (issue 18).

A card's keys are made the first time the lab needs them (`lab up` or a tap) and kept for the lab's
life in `<data>/orgs/issued-cards.json` (0600), beside the card's read counter: the virtual card
(lab/vcard.py) starts from it on each tap and the lab stores what the card counted up to, as a real
card keeps its counter. The org's RADIUS server gets the same cards (`lab.services.radius`), the
way `tenantprint org card issue` registers a real one. The card's UID is `lab.actions.default_uid`:
`lab tap` presents this card unless told another UID (a "written" card) or raw NDEF (a replay).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager

from org.card_sun import Card


def default_uid(org: str, user: str) -> str:
    """A stable 7-byte card UID per user, so repeated taps present the same card."""
    return "04" + hashlib.sha256(f"{user}@{org}".encode()).hexdigest()[:12]


def holders() -> list[tuple[str, str]]:
    """(org, user) of everyone the lab issues a card to."""
    from lab.users import USERS

    return [(u.org_id, u.user_id) for u in USERS if not u.user_id.startswith("card-") and u.kind != "disabled"]


@contextmanager
def _locked(lab):
    d = lab.layout.data_dir("orgs")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    path = d / "issued-cards.json"
    with open(d / ".issued-cards.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cards = json.loads(path.read_text()) if path.exists() else {}
        if not cards:
            cards = {f"{u}@{o}": {**Card.new(bytes.fromhex(default_uid(o, u))).to_json(), "counter": 0}
                     for o, u in holders()}
        yield cards
        tmp = d / ".issued-cards.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cards, f)
        os.replace(tmp, path)


def card_of(lab, org: str, user: str) -> tuple[Card, int] | None:
    """user@org's issued card and its read counter now, or None (no card issued to them)."""
    with _locked(lab) as cards:
        entry = cards.get(f"{user}@{org}")
    if entry is None:
        return None
    return Card.from_json({k: entry[k] for k in ("uid", "k_meta", "k_file")}), int(entry["counter"])


def cards_of(lab, org: str) -> dict[str, Card]:
    """The cards issued to `org`'s users: what its auth server registers."""
    with _locked(lab) as cards:
        entries = dict(cards)
    return {key.split("@", 1)[0]: Card.from_json({k: e[k] for k in ("uid", "k_meta", "k_file")})
            for key, e in entries.items() if key.split("@", 1)[1] == org}


def next_proofs(lab, org: str, user: str, n: int = 1) -> list[str]:
    """The next `n` SUN messages of user@org's issued card (48 hex digits each, as a badge carries
    them), as the card would give them on its next reads; its counter moves on past them."""
    from org.card_sun import message

    card, counter = card_of(lab, org, user)
    out = []
    for i in range(1, n + 1):
        m = message(card.uid, counter + i, card.k_meta_read, card.k_file_read)
        out.append(m.enc_picc_data + m.mac)
    counted(lab, org, user, counter + n)
    return out


def counted(lab, org: str, user: str, counter: int) -> None:
    """The card counted up to `counter` (never down)."""
    with _locked(lab) as cards:
        entry = cards.get(f"{user}@{org}")
        if entry is not None and counter > entry["counter"]:
            entry["counter"] = counter
