"""Cards known only by their UID (`card-<uid>`, issue 19) in the session machine: a copied UID alone
never releases anything. Yes needs the PIN, and it releases the jobs of the person the org's server
names as the card's owner, never the card id's or anyone else's. Pure: no I/O, no clock."""

from __future__ import annotations

from dataclasses import replace

from firmware import machine as m
from firmware import panel
from firmware.effects import Audit, ReleaseJobs, ShowPanel
from firmware.events import AuthAccepted
from test_machine import HELD  # noqa: F401  (alice's jobs 5, 7, 3 and bob's 8, held in acme's session)

CARD = "card-04c0ffee5a1e01"


def _authing(with_pin: bool):
    return m.Authenticating(replace(HELD, attempt=1), CARD, 200.0, with_pin=with_pin)


def _released(effects):
    return [e for e in effects if isinstance(e, ReleaseJobs)]


def test_a_card_with_its_pin_releases_the_jobs_of_the_person_the_org_names():
    nxt, effects = m.step(_authing(True), AuthAccepted(201.0, 1, 1, CARD, "bob"))
    assert _released(effects) == [ReleaseJobs(1, "bob", (8,))]
    assert nxt.s.authed_user == "bob"


def test_a_card_accepted_without_a_pin_releases_nothing():
    # an org server that accepts a UID alone (misconfigured, or a card-only entry): the MFP refuses
    nxt, effects = m.step(_authing(False), AuthAccepted(201.0, 1, 1, CARD, "bob"))
    assert _released(effects) == [] and isinstance(nxt, m.Ready) and nxt.s.authed_user is None
    assert [e.message for e in effects if isinstance(e, ShowPanel)] == [panel.text("not-authorized")]


def test_a_card_whose_owner_the_server_does_not_name_releases_nothing():
    for as_user in ("", "card-0000aaaa"):
        nxt, effects = m.step(_authing(True), AuthAccepted(201.0, 1, 1, CARD, as_user))
        assert _released(effects) == [] and nxt.s.authed_user is None


def test_a_badge_accepted_as_someone_else_releases_nothing():
    authing = m.Authenticating(replace(HELD, attempt=1), "alice", 200.0)
    nxt, effects = m.step(authing, AuthAccepted(201.0, 1, 1, "alice", "bob"))
    assert _released(effects) == [] and nxt.s.authed_user is None


def test_the_card_id_is_never_on_the_panel_or_in_an_audit_in_full():
    _, effects = m.step(_authing(True), AuthAccepted(201.0, 1, 1, CARD, "bob"))
    masked = [panel.mask_card(v) for e in effects if isinstance(e, Audit) for v in e.fields.values()]
    assert all(CARD not in str(v) for v in masked)
    assert panel.text("authenticating", user=CARD) == "Checking card-…1e01…"
