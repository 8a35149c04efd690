"""hal/printer's pure job logic: a job whose document is still arriving is not held yet; JobWatch
turns job lists into events (held, documents changed, gone), and says nothing more of a job handed
over to the engine."""

from hal.printer import INBOUND_QUEUE, JobGone, JobHeld
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
    assert _held(8, {}).document_format == "application/octet-stream"
    assert _held(9, {"document-format": "application/pdf"}).document_format == "application/pdf"


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


def test_a_job_handed_over_to_the_engine_is_reported_no_more():
    w = JobWatch()
    w.step({1: _job(), 2: _job()}, set())
    # 1 purged by the hand-over (canceled, still listed a moment), 2 already gone from the list
    assert w.step({1: _job(state=7)}, {1, 2}) == ([], [])
    assert w.step({1: _job(state=7)}, {1}) == ([], [])
    assert w.step({}, set()) == ([], []) and not w.known and not w.ended


def test_a_held_job_that_is_cancelled_or_aborted_is_gone_and_purged():
    w = JobWatch()
    w.step({1: _job(), 2: _job()}, set())
    assert w.step({1: _job(state=8), 2: _job(state=7)}, set()) == (
        [JobGone(1, "aborted"), JobGone(2, "cancelled")], [1, 2])


def test_a_held_job_that_disappears_is_removed_and_one_completing_unreleased_is_not_printed():
    w = JobWatch()
    w.step({1: _job(), 2: _job()}, set())
    assert w.step({2: _job(state=9)}, set()) == ([JobGone(2, "completed without release"), JobGone(1, "removed")], [2])
