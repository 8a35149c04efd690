"""No job is lost (issue 14): a job held at the MFP when its session ends goes back to the desk that
sent it, and the org's next session gets it again; nothing prints twice. Every scenario ends with
the cleanup invariants."""

from __future__ import annotations

import time

from system import clean_system, lab_cli, system, wait_for  # noqa: F401 (fixtures)

DOC = "/usr/share/cups/data/default-testpage.pdf"


def _status():
    return lab_cli("status")


def _held_users():
    return sorted(j["user"] for j in _status()["firmware"]["held_jobs"])


def test_a_held_job_survives_a_tunnel_drop_and_prints_once_with_the_next_session(clean_system):
    lab_cli("tap", "--org", "acme", "--user", "alice")
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(_status()["printed"])
    lab_cli("print", "--org", "acme", "--user", "alice", "--from", "desk", DOC)
    wait_for(lambda: _held_users() == ["alice"], 20, "alice's job held")
    desk = _status()["desks"]["acme"]
    assert [(j["user"], j["title"]) for j in desk["held"]] == [("alice", "default-testpage.pdf")]  # the desk's copy

    lab_cli("fault", "gateway-kill", "--org", "acme")  # the tunnel drops: the MFP purges the session
    wait_for(lambda: _status()["firmware"]["state"] == "idle", 20, "the purge")
    st = wait_for(lambda: (s := _status())["desks"]["acme"]["queue"] is False and s, 15, "the desk queue gone")
    assert [j["user"] for j in st["desks"]["acme"]["held"]] == ["alice"]  # kept at the desk, visible
    assert len(st["printed"]) == before
    lab_cli("fault", "gateway-start", "--org", "acme")

    lab_cli("tap", "--org", "acme", "--user", "carol")  # the org's next session, opened by a colleague
    wait_for(lambda: _held_users() == ["alice"], 30, "alice's job delivered again by her desk")
    assert len(_status()["printed"]) == before  # held, not printed
    lab_cli("tap", "--org", "acme", "--user", "alice")
    wait_for(lambda: len(_status()["printed"]) > before, 15, "alice's document")
    wait_for(lambda: _status()["desks"]["acme"]["held"] == [], 15, "the desk's copy dropped once released")
    time.sleep(2)  # a redelivery, if one were coming, would have reached the MFP by now
    st = _status()
    assert [p["user"] for p in st["printed"][before:]] == ["alice"]  # once
    assert st["firmware"]["held_jobs"] == []
