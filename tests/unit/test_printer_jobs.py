"""hal/printer's pure job logic: a job whose document is still arriving is not held yet; JobWatch
turns job lists into events (held, documents changed, printed only when completed)."""

from hal.printer import INBOUND_QUEUE, RELEASE_QUEUE, JobGone, JobHeld, JobPrinted
from hal.printer.jobs import JobWatch, _complete, _held


def test_incoming_jobs_are_not_complete():
    assert not _complete({"job-state-reasons": ["job-incoming"]})
    assert not _complete({"job-state-reasons": "job-data-insufficient"})
    assert _complete({"job-state-reasons": ["none"]})
    assert _complete({})


def test_held_job_from_cups_attributes():
    job = _held(7, {"job-originating-user-name": "alice", "job-name": "Q", "job-k-octets": 2,
                    "job-originating-host-name": "10.20.0.50", "time-at-creation": 5,
                    "tenantprint-owner-proof": "v1.abc"})
    assert (job.id, job.user, job.title, job.size_bytes, job.origin_host) == (7, "alice", "Q", 2048, "10.20.0.50")
    assert job.proof == "v1.abc"
    assert _held(8, {}).proof == ""


def _job(queue=INBOUND_QUEUE, state=4, documents=1, **extra):
    return {"job-printer-uri": f"ipp://localhost/printers/{queue}", "job-state": state,
            "number-of-documents": documents, "job-originating-user-name": "alice", **extra}


def test_a_job_is_held_once_and_only_when_whole():
    w = JobWatch()
    events, purge = w.step({1: _job(**{"job-state-reasons": ["job-incoming"]})}, set())
    assert events == [] and purge == []
    events, _ = w.step({1: _job()}, set())
    assert [type(e) for e in events] == [JobHeld]
    assert w.step({1: _job()}, set()) == ([], [])


def test_a_document_appended_to_a_held_job_purges_it():
    w = JobWatch()
    w.step({1: _job(documents=1)}, set())
    assert w.step({1: _job(documents=2)}, set()) == ([JobGone(1, "documents changed")], [1])
    assert w.step({1: _job(documents=2)}, set()) == ([], [])  # reported once, never held again
    assert w.step({}, set()) == ([], []) and not w.ended


def test_a_released_job_prints_only_when_completed():
    w = JobWatch()
    w.step({1: _job()}, set())
    assert w.step({1: _job(RELEASE_QUEUE, state=5)}, {1}) == ([], [])
    assert w.step({1: _job(RELEASE_QUEUE, state=9)}, {1}) == ([JobPrinted(1)], [1])


def test_a_released_job_that_fails_or_vanishes_is_not_printed():
    w = JobWatch()
    w.step({1: _job(), 2: _job(), 3: _job()}, set())
    events, purge = w.step({1: _job(RELEASE_QUEUE, state=8), 2: _job(RELEASE_QUEUE, state=5),
                            3: _job(RELEASE_QUEUE, state=7)}, {1, 2, 3})
    assert events == [JobGone(1, "aborted"), JobGone(3, "cancelled")] and purge == [1, 3]
    assert w.step({}, {2}) == ([JobGone(2, "vanished")], [])


def test_a_held_job_that_disappears_is_removed_and_one_completing_unreleased_is_not_printed():
    w = JobWatch()
    w.step({1: _job(), 2: _job()}, set())
    assert w.step({2: _job(state=9)}, set()) == ([JobGone(2, "completed without release"), JobGone(1, "removed")], [2])
