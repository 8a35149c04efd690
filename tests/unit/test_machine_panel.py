"""The machine's panel events (ChooseNext, JobsChosen, JobsDeleted, LoggedOut), row by row.

Only the person the org's server accepted by a tap in this session, logged in at the panel and
still fresh (`Limits.panel_return_s`), acts on jobs, and only on their own held jobs.
"""

from __future__ import annotations

from dataclasses import replace

from firmware import machine as m
from firmware.effects import Authenticate, PurgeJob, ReleaseJobs, ReportJobs, ShowPanel
from firmware.events import AuthAccepted, CardTapped, ChooseNext, JobsChosen, JobsDeleted, LoggedOut, Tick
from test_machine import AUTHING, HELD, core

LIMITS = m.LIMITS
READY = m.Ready(replace(HELD, attempt=1))
# alice logged in at the panel at 200.0 with her jobs 7, 5, 3 (arrival order) and bob's 8 held
LOGGED_IN = m.Ready(replace(HELD, attempt=1, authed_user="alice", panel_user="alice", panel_since=200.0))


def keys(effects):
    return [e.key for e in effects if isinstance(e, ShowPanel)]


def test_choose_next_then_an_accepted_tap_lists_the_jobs_and_prints_nothing():
    armed, effects = m.step(READY, ChooseNext(190.0, 1))
    assert armed.s.choose_armed_at == 190.0 and keys(effects) == ["choose-tap"] and not core(effects)
    authing, _ = m.step(armed, CardTapped(195.0, "alice", "acme", "04A1"))
    assert isinstance(authing, m.Authenticating)
    ready, effects = m.step(authing, AuthAccepted(196.0, 1, authing.s.attempt, "alice"))
    assert isinstance(ready, m.Ready) and ready.s.panel_user == "alice" and ready.s.choose_armed_at is None
    assert not core(effects[:1]) and not any(isinstance(e, ReleaseJobs) for e in effects)
    assert keys(effects) == ["your-jobs"]


def test_an_accepted_tap_without_choose_next_still_prints_all():
    nxt, effects = m.step(AUTHING, AuthAccepted(201.0, 1, 1, "alice"))
    assert ReleaseJobs(1, "alice", (7, 5, 3)) in effects and nxt.s.panel_user == "alice"


def test_choose_next_expires():
    armed, _ = m.step(READY, ChooseNext(100.0, 1))
    later, _ = m.step(armed, Tick(100.0 + LIMITS.choose_armed_s))
    assert later.s.choose_armed_at is None


def test_chosen_prints_only_the_chosen_of_the_persons_own_jobs():
    nxt, effects = m.step(LOGGED_IN, JobsChosen(210.0, 1, (3, 8, 99)))
    assert core(effects) == [ReleaseJobs(1, "alice", (3,))]  # bob's 8 and an unknown 99 dropped
    assert isinstance(nxt, m.Releasing) and nxt.s.panel_since == 210.0


def test_print_all_from_the_panel():
    _, effects = m.step(LOGGED_IN, JobsChosen(210.0, 1, None))
    assert core(effects) == [ReleaseJobs(1, "alice", (7, 5, 3))]


def test_nobody_logged_in_or_logged_in_too_long_ago_acts_on_nothing():
    for state, at in ((READY, 210.0), (LOGGED_IN, 200.0 + LIMITS.panel_return_s)):
        for event in (JobsChosen(at, 1, None), JobsDeleted(at, 1, (7,))):
            nxt, effects = m.step(state, event)
            assert not core(effects) and nxt.s.held == state.s.held, event


def test_delete_cancels_and_reports_the_persons_own_jobs():
    nxt, effects = m.step(LOGGED_IN, JobsDeleted(210.0, 1, (5, 8)))
    assert core(effects) == [ReportJobs(1, "deleted", (5,)), PurgeJob(1, 5, "deleted by its owner")]
    assert [j.job_id for j in nxt.s.held] == [7, 8, 3] or {j.job_id for j in nxt.s.held} == {7, 8, 3}
    assert keys(effects) == ["jobs-deleted"]


def test_stale_session_numbers_are_dropped():
    nxt, effects = m.step(LOGGED_IN, JobsChosen(210.0, 2, None))
    assert nxt == LOGGED_IN and not core(effects)


def test_log_out_and_the_panel_timeout():
    out, effects = m.step(LOGGED_IN, LoggedOut(205.0, 1))
    assert out.s.panel_user is None and keys(effects) == ["ready"]
    timed, effects = m.step(LOGGED_IN, Tick(200.0 + LIMITS.panel_return_s))
    assert timed.s.panel_user is None and keys(effects) == ["ready"]
    kept, _ = m.step(LOGGED_IN, Tick(200.0 + LIMITS.panel_return_s - 1))
    assert kept.s.panel_user == "alice"


def test_another_persons_tap_logs_the_panels_person_out():
    nxt, effects = m.step(LOGGED_IN, CardTapped(205.0, "bob", "acme", "04B0"))
    assert isinstance(nxt, m.Authenticating) and nxt.s.panel_user is None
    assert any(isinstance(e, Authenticate) and e.user == "bob" for e in effects)
