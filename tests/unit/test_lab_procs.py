"""lab.procs: processes recorded and stopped by PID, never by name; a recycled pid is not ours."""

import json
import time

from lab.procs import Supervisor


def test_spawn_stop_and_records(tmp_path):
    sup = Supervisor(tmp_path / "procs")
    rec = sup.spawn("sleeper", ["sleep", "30"], log=tmp_path / "sleeper.log")
    assert rec.alive()
    assert [r.key for r in sup.records()] == ["sleeper"]
    assert sup.stop("sleeper") is True
    assert not rec.alive()
    assert sup.records() == []


def test_stop_kills_whole_session_and_escalates(tmp_path):
    sup = Supervisor(tmp_path / "procs")
    # A shell that ignores SIGTERM and has a child: both must be gone after stop.
    rec = sup.spawn("stubborn", ["sh", "-c", "trap '' TERM; sleep 30 & wait"])
    time.sleep(0.2)
    assert sup.stop("stubborn", timeout=0.5) is True
    assert not rec.alive()


def test_record_with_other_start_time_is_not_ours(tmp_path):
    sup = Supervisor(tmp_path / "procs")
    rec = sup.spawn("sleeper", ["sleep", "30"])
    path = tmp_path / "procs" / "sleeper.json"
    data = json.loads(path.read_text())
    data["start_time"] += 1  # as if the pid had been recycled by another process
    path.write_text(json.dumps(data))
    assert sup.get("sleeper").alive() is False
    assert sup.stop("sleeper") is False  # not signalled: it is not ours
    assert rec.alive()
    import os, signal
    os.kill(rec.pid, signal.SIGKILL)


def test_spawn_refuses_duplicate_live_key(tmp_path):
    sup = Supervisor(tmp_path / "procs")
    sup.spawn("one", ["sleep", "30"])
    try:
        try:
            sup.spawn("one", ["sleep", "30"])
        except RuntimeError as exc:
            assert "already running" in str(exc)
        else:
            raise AssertionError("a second live process under the same key was accepted")
    finally:
        sup.stop_all()
