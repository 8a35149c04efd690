"""The lab's seeded users: who exists in which org's auth server, and how they authenticate.

- `card`: a tap of the card the org issued them is enough: the org's server checks the card's SUN
  proof (lab/sun_cards.py). A card without proof (an NTAG, a FeliCa, a badge written on any card)
  is refused, or asks for the user's fallback PIN if they have one (carol);
- `pin`: the server challenges for a PIN, then checks it;
- `disabled`: the server rejects with "Account disabled".

`initech` (no contract, no gateway, no auth server in the lab) has a user so that a card of an
org the space does not serve can be tapped. PINs are lab data: they are not org secrets of the
canary kind, but they are still never logged by the firmware.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from org.radius_config import RadiusUser


@dataclass(frozen=True)
class LabUser:
    user_id: str
    org_id: str
    kind: str  # card | pin | disabled
    pin: str | None = field(default=None, repr=False)
    owner: str | None = None  # a UID-only card (`card-<uid>`): the user it belongs to

    def radius_user(self) -> RadiusUser:
        return RadiusUser(self.user_id, self.kind, self.pin, self.owner)


USERS = (
    LabUser("alice", "acme", "card"),
    LabUser("bob", "acme", "pin", "2468"),
    LabUser("carol", "acme", "card", "739146"),  # her fallback PIN, for a card without proof
    LabUser("dave", "acme", "disabled"),
    LabUser("grace", "globex", "card"),
    LabUser("heidi", "globex", "pin", "1357"),
    LabUser("ivan", "globex", "disabled"),
    LabUser("ivy", "initech", "card"),
    LabUser("uma", "umbrella", "card"),  # the extra org's (`lab up --extra-orgs 1`)
    # bob's staff card, known by its UID only (lab/cards.py): his PIN, then his jobs
    LabUser("card-04c0ffee5a1e01", "acme", "pin", "2468", owner="bob"),
    LabUser("card-20260042", "acme", "pin", "2468", owner="bob"),  # his proximity badge (wedge reader)
    LabUser("card-04beef00cafe02", "globex", "pin", "1357", owner="heidi"),  # her staff card
)


def users_of(org: str) -> tuple[LabUser, ...]:
    return tuple(u for u in USERS if u.org_id == org)


def user(user_id: str, org: str) -> LabUser:
    for u in USERS:
        if u.user_id == user_id and u.org_id == org:
            return u
    raise KeyError(f"no lab user {user_id}@{org}")
