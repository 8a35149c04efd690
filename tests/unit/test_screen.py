"""The panel's screen document (firmware/screen.py) and the panel API's requests (firmware/panel_api.py):
pure, from machine states."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from firmware import events as ev
from firmware import machine as m
from firmware import panel_api
from firmware.screen import Facts, Shown, queue_name, screen_of
from test_machine import HELD

READY = m.Ready(replace(HELD, attempt=1))
LOGGED_IN = m.Ready(replace(HELD, attempt=1, authed_user="alice", panel_user="alice", panel_since=200.0))
JOBS = {7: {"title": "Q3 report", "bytes": 2048, "at": 0.0}, 5: {"title": "Minutes", "bytes": 10},
        3: {"title": "Slides", "bytes": 1}, 8: {"title": "Bob's secret plan", "bytes": 5}}
FACTS = Facts(jobs=JOBS, local_id="mfp-1.space-1", limits=m.Limits(pin_timeout_s=30.0, panel_return_s=30.0))


def text_of(doc) -> str:
    return repr(doc)


def test_idle_after_a_purge_names_no_org_user_or_job():
    shown = Shown("tunnel-down", (("org", "acme"),), 100.0)
    doc = screen_of(m.Idle(2), shown, 101.0, FACTS)
    assert doc["screen"] == "message" and doc["line"] == {"key": "tunnel-down", "fields": {}}
    assert "acme" not in text_of(doc) and "alice" not in text_of(doc) and "Q3" not in text_of(doc)
    later = screen_of(m.Idle(2), shown, 131.0, FACTS)
    assert later["screen"] == "idle" and later["line"]["key"] == "idle"


def test_progress_shows_the_org():
    doc = screen_of(m.LookingUp(1, "acme", "alice", 100.0), Shown("looking-up", (("org", "acme"),), 100.0),
                    100.0, FACTS)
    assert doc["screen"] == "progress" and doc["line"] == {"key": "looking-up", "fields": {"org": "acme"}}


def test_ready_names_the_desks_queue():
    doc = screen_of(READY, Shown("ready", (("org", "acme"),), 100.0), 100.5, FACTS)
    assert doc["screen"] == "ready" and doc["queue"] == "tenantprint-mfp-1_space-1" == queue_name("mfp-1.space-1")
    assert doc["jobs"] == [] and "Q3" not in text_of(doc)  # nobody logged in: no titles


def test_the_logged_in_person_sees_only_their_own_jobs():
    doc = screen_of(LOGGED_IN, Shown("your-jobs", (("user", "alice"),), 200.0), 201.0,
                    replace(FACTS, printing=[(1, 9, "alice", "Poster", "printing"), (1, 10, "bob", "Bob's", "waiting")]))
    assert doc["screen"] == "jobs" and doc["user"] == "alice"
    assert [j["id"] for j in doc["jobs"]] == [7, 5, 3] and doc["jobs"][0]["title"] == "Q3 report"
    assert [p["id"] for p in doc["printing"]] == [9]
    assert "Bob's" not in text_of(doc)
    gone = screen_of(LOGGED_IN, Shown("your-jobs", (), 200.0), 230.0, FACTS)  # the log-in timed out
    assert gone["screen"] == "ready" and gone["jobs"] == [] and "Q3" not in text_of(gone)


def test_pin_screen():
    state = m.AwaitingPin(READY.s, "bob", 100.0)
    doc = screen_of(state, Shown("enter-pin", (), 100.0), 110.0, replace(FACTS, attempts_left=4))
    assert doc["screen"] == "pin" and doc["pin"] == {"attempts_left": 4, "remaining_s": 20, "typed": 0}


def test_card_ids_are_masked_on_the_screen():
    doc = screen_of(READY, Shown("not-authorized", (("user", "card-04c0ffee5a1e01"),), 100.0), 101.0, FACTS)
    assert "04c0ffee5a1e01" not in text_of(doc) and doc["screen"] == "message"


def test_out_of_service():
    assert screen_of(m.Fault(3), Shown("fault", (), 0.0), 1.0, FACTS)["screen"] == "out-of-service"


# -- the panel API ------------------------------------------------------------------------------

def test_actions_become_machine_events():
    assert panel_api.event_for({"cmd": "print", "session": 1, "jobs": [7, 7, 3]}, 5.0, READY) == \
        ev.JobsChosen(5.0, 1, (7, 3))
    assert panel_api.event_for({"cmd": "print", "session": 1}, 5.0, READY) == ev.JobsChosen(5.0, 1, None)
    assert panel_api.event_for({"cmd": "delete", "session": 1, "jobs": [5]}, 5.0, READY) == ev.JobsDeleted(5.0, 1, (5,))
    assert panel_api.event_for({"cmd": "logout", "session": 1}, 5.0, READY) == ev.LoggedOut(5.0, 1)
    assert panel_api.event_for({"cmd": "choose-next"}, 5.0, READY) == ev.ChooseNext(5.0, 1)
    assert panel_api.event_for({"cmd": "choose-next"}, 5.0, m.Idle(1)) is None
    assert panel_api.event_for({"cmd": "pin-cancel"}, 5.0, READY) is None


@pytest.mark.parametrize("request_", [
    {"cmd": "delete", "session": 1},                       # delete names its jobs
    {"cmd": "delete", "session": 1, "jobs": []},
    {"cmd": "print", "session": "1"},
    {"cmd": "print", "session": True},
    {"cmd": "print", "session": 1, "jobs": ["7"]},
    {"cmd": "print", "session": 1, "jobs": [0]},
    {"cmd": "print", "session": 1, "jobs": list(range(1, 200))},
    {"cmd": "logout"},
    {"cmd": "status"},                                     # the control socket's, not the panel's
    {"cmd": "clear-fault"},
])
def test_malformed_or_foreign_requests_are_refused(request_):
    with pytest.raises(panel_api.PanelRequestError):
        panel_api.event_for(request_, 5.0, READY)


def test_the_feed_numbers_changes_and_wakes_waiters():
    async def run():
        feed = panel_api.ScreenFeed()
        assert feed.update({"screen": "idle"}) and not feed.update({"screen": "idle"})
        assert feed.current()["version"] == 1
        waiter = asyncio.create_task(feed.wait(1, 5))
        await asyncio.sleep(0.01)
        feed.update({"screen": "progress"})
        got = await asyncio.wait_for(waiter, 1)
        assert got == {"version": 2, "screen": "progress"}
        assert (await feed.wait(0, 5))["version"] == 2          # already newer: at once
        assert (await feed.wait(2, 0.05))["version"] == 2        # nothing new: at the timeout
        with pytest.raises(panel_api.PanelRequestError):
            await feed.wait("1", 1)
    asyncio.run(run())


def test_countdowns_alone_make_no_new_version():
    async def run():
        feed = panel_api.ScreenFeed()
        feed.update({"screen": "pin", "pin": {"attempts_left": 5, "remaining_s": 30, "typed": 0}, "idle_in_s": None})
        assert not feed.update({"screen": "pin", "pin": {"attempts_left": 5, "remaining_s": 29, "typed": 0},
                                "idle_in_s": None})
        assert feed.current()["pin"]["remaining_s"] == 29 and feed.current()["version"] == 1  # fresh, not new
        assert feed.update({"screen": "pin", "pin": {"attempts_left": 5, "remaining_s": 29, "typed": 1},
                            "idle_in_s": None})
        assert not feed.update({**feed.doc, "idle_in_s": 12})
    asyncio.run(run())
