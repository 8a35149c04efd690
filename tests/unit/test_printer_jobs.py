"""hal/printer's pure job logic: a job whose document is still arriving is not held yet."""

from hal.printer.jobs import _complete, _held


def test_incoming_jobs_are_not_complete():
    assert not _complete({"job-state-reasons": ["job-incoming"]})
    assert not _complete({"job-state-reasons": "job-data-insufficient"})
    assert _complete({"job-state-reasons": ["none"]})
    assert _complete({})


def test_held_job_from_cups_attributes():
    job = _held(7, {"job-originating-user-name": "alice", "job-name": "Q", "job-k-octets": 2,
                    "job-originating-host-name": "10.20.0.50", "time-at-creation": 5})
    assert (job.id, job.user, job.title, job.size_bytes, job.origin_host) == (7, "alice", "Q", 2048, "10.20.0.50")
