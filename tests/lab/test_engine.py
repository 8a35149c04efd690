"""The print engine in the lab: a released job is followed to its real end (issue 14). It counts as
printed only when the engine says completed, and it outlives its session: the document is its
owner's once they released it. Every scenario ends with the cleanup invariants."""

from __future__ import annotations

import time

from system import clean_system, lab_cli, system, wait_for  # noqa: F401 (fixtures)

DOC = "/usr/share/cups/data/default-testpage.pdf"


def _status():
    return lab_cli("status")


def test_a_job_released_while_the_engine_is_off_prints_after_its_session_ended(clean_system):
    st = lab_cli("tap", "--org", "acme", "--user", "alice")
    assert st["state"] == "ready"
    wait_for(lambda: _status()["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(_status()["printed"])
    ended_before = len(_status()["firmware"]["engine"]["ended"])
    lab_cli("print", "--org", "acme", "--user", "alice", "--from", "desk", DOC)
    wait_for(lambda: [j["user"] for j in _status()["firmware"]["held_jobs"]] == ["alice"], 20, "alice's job held")
    lab_cli("fault", "engine-stop")
    try:
        lab_cli("tap", "--org", "acme", "--user", "alice")
        fw = wait_for(lambda: (f := _status()["firmware"])["printing"] and f, 10, "alice's job released")
        assert fw["held_jobs"] == [] and [j["user"] for j in fw["printing"]] == ["alice"]
        assert fw["sessions"]["acme"]["printing"] == fw["printing"]
        wait_for(lambda: _status()["firmware"]["engine"]["reachable"] is False, 10, "the engine seen off")
        lab_cli("fault", "gateway-kill", "--org", "acme")  # her session's tunnel drops
        wait_for(lambda: _status()["firmware"]["state"] == "idle", 15, "the purge after the gateway died")
        st = _status()
        assert st["firmware"]["sessions"] == {} and st["firmware"]["org"] is None
        assert [j["org"] for j in st["firmware"]["engine"]["pending"]] == ["acme"]  # waiting, not lost
        assert len(st["printed"]) == before  # nothing printed while the engine was off
        assert len(st["firmware"]["engine"]["ended"]) == ended_before  # nor counted printed
    finally:
        lab_cli("fault", "engine-start")
    wait_for(lambda: len(_status()["printed"]) > before, 20, "alice's document once the engine is back")
    st = wait_for(lambda: (s := _status())["firmware"]["engine"]["pending"] == [] and s, 10, "the engine spool empty")
    assert [p["user"] for p in st["printed"][before:]] == ["alice"]  # once
    ended = st["firmware"]["engine"]["ended"][ended_before:]
    assert [(e["org"], e["state"], e["printed"]) for e in ended] == [("acme", "completed", True)]
    time.sleep(1)
    assert [p["user"] for p in _status()["printed"][before:]] == ["alice"]  # and never again
