"""The desk's holding queue, pure parts (org/desk_holding.py): the copy's attributes, the tag that
lets only this desk name a job's delivery, the options CUPS hands a backend, and the plan (given the
copies, the MFP listing and the outcomes: which to drop, cancel, deliver again). The backend's side
runs against a scripted MFP and a scripted desk cupsd on local sockets; the real daemons are in
tests/integration/test_no_job_lost.py."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.printer import job_proof
from hal.printer.ipp import decode_response
from org import desk_backend as db
from org import desk_holding as h
from org import desk_key
from org.desk_holding import DeliveryNote, HeldCopy, plan

KEY = desk_key.generate("acme")
TAG_KEY = h.tag_key(KEY.private_key)
D1, D2, D3 = "1" * 32, "2" * 32, "3" * 32
NOW = 1_800_000_000.0
JOB = dict(org="acme", user="alice", title="report.pdf")


# -- the copy's attributes ---------------------------------------------------------------------------

def test_a_delivery_note_round_trips_and_never_holds_white_space():
    note = DeliveryNote(D1, "C=CH, O=space 1, CN=mfp-1")
    assert not any(ch.isspace() for ch in note.value)  # Debian 12's cupsd crashes on those
    assert note.value.startswith(D1 + "/") and DeliveryNote.parse(note.value) == note
    assert DeliveryNote.parse(DeliveryNote(D2, "mfp-1.space-1").value).mfp == "mfp-1.space-1"


@pytest.mark.parametrize("value", [None, 5, "", D1, D1 + "/", "xyz/mfp", "AB" * 16 + "/m", D1 + "/%ZZ",
                                   D1 + "/a%0Ab", D1 + "/%FF", "/" + D1, D1 + "/" + "m" * 2000])
def test_malformed_notes_are_none(value):
    assert DeliveryNote.parse(value) is None


def test_the_copy_attributes_leave_out_an_unknown_session():
    note = DeliveryNote(D1, "mfp-1")
    attrs = h.copy_attributes(note, "abcdef0123456789", "1.x", "application/pdf")
    assert attrs[h.SESSION_ATTRIBUTE] == "abcdef0123456789" and attrs[h.DELIVERY_ATTRIBUTE] == note.value
    assert h.SESSION_ATTRIBUTE not in h.copy_attributes(note, None, "1.x", "application/pdf")
    assert h.SESSION_ATTRIBUTE not in h.copy_attributes(note, "not hex", "1.x", "application/pdf")


def _options(note=DeliveryNote(D1, "mfp-1"), first=1_799_999_000, fmt="application/pdf", **job) -> dict:
    tag = h.delivery_tag(TAG_KEY, **{**JOB, **job}, delivery=note.delivery, first=first, document_format=fmt)
    return h.copy_attributes(note, "abcdef0123456789", tag, fmt)


def test_a_redelivery_is_recognized_only_with_this_desks_tag_for_this_job():
    again = h.redelivery(_options(), TAG_KEY, **JOB)
    assert again == h.Redelivery(DeliveryNote(D1, "mfp-1"), 1_799_999_000, "application/pdf")
    assert h.redelivery({}, TAG_KEY, **JOB) is None
    # a colleague's delivery id on bob's job, or the tag moved to another title, org or format
    assert h.redelivery(_options(), TAG_KEY, **{**JOB, "user": "bob"}) is None
    assert h.redelivery(_options(), TAG_KEY, **{**JOB, "title": "other.pdf"}) is None
    assert h.redelivery(_options(), TAG_KEY, **{**JOB, "org": "globex"}) is None
    forged = {**_options(), h.FORMAT_ATTRIBUTE: "application/postscript"}
    assert h.redelivery(forged, TAG_KEY, **JOB) is None
    other_desk = h.tag_key(desk_key.generate("acme").private_key)
    assert h.redelivery(_options(), other_desk, **JOB) is None
    made_up = {**_options(), h.TAG_ATTRIBUTE: "1799999000." + "0" * 32}
    assert h.redelivery(made_up, TAG_KEY, **JOB) is None


def test_cups_options_argument_is_parsed_as_cups_writes_it():
    # as cupsd 2.4 writes argv[5] (measured): name=value, a space and quotes escaped by a backslash
    opts = (f"{h.DELIVERY_ATTRIBUTE}={D1}/mfp-1 job-uuid=urn:uuid:9d678dec job-originating-host-name=localhost "
            "date-time-at-creation= x-title=a\\ b\\'c noduplex copies=2")
    got = h.parse_job_options(opts)
    assert got[h.DELIVERY_ATTRIBUTE] == f"{D1}/mfp-1" and got["x-title"] == "a b'c"
    assert got["date-time-at-creation"] == "" and "noduplex" not in got
    assert h.parse_job_options("unbalanced='x") == {} and h.parse_job_options("") == {}


# -- the plan ----------------------------------------------------------------------------------------

def copy(job, delivery=D1, mfp="mfp-1", session="s1", first=NOW - 60, processed=False):
    note = DeliveryNote(delivery, mfp) if delivery else None
    return HeldCopy(job, "alice", "t", note, session, first, processed)


def test_outcomes_drop_printed_copies_and_cancel_deleted_and_expired_ones_with_the_reason():
    copies = [copy(1, D1), copy(2, D2), copy(3, D3), copy(4, "4" * 32)]
    outcomes = {D1: "printed", D2: "deleted", D3: "expired"}
    p = plan(copies, {"mfp-1": "s1"}, {"mfp-1": "tenantprint-mfp-1"}, outcomes, NOW)
    assert p.drop == [1] and p.cancel == [(2, h.DELETED_REASON), (3, h.EXPIRED_REASON)] and p.redeliver == []
    assert "expired at the printer" in h.EXPIRED_REASON


def test_a_released_copy_is_kept_until_printed_and_goes_back_only_when_its_session_is_over():
    kept = plan([copy(1, D1)], {"mfp-1": "s1"}, {"mfp-1": "tenantprint-mfp-1"}, {D1: "released"}, NOW)
    assert (kept.drop, kept.cancel, kept.redeliver) == ([], [], [])
    over = plan([copy(1, D1)], {"mfp-1": "s2"}, {"mfp-1": "tenantprint-mfp-1"}, {D1: "released"}, NOW)
    assert over.redeliver == [(1, "tenantprint-mfp-1")]  # the MFP says how it ended; never prints twice


def test_a_failed_copy_goes_back_at_once_even_into_its_own_session_and_once():
    p = plan([copy(1, D1)], {"mfp-1": "s1"}, {"mfp-1": "tenantprint-mfp-1"}, {D1: "failed"}, NOW)
    assert p.redeliver == [(1, "tenantprint-mfp-1")]
    again = plan([copy(2, D1)], {"mfp-1": "s1"}, {"mfp-1": "tenantprint-mfp-1"}, {D1: h.REDELIVERED}, NOW)
    assert (again.drop, again.redeliver) == ([], [])  # the copy the redelivery made waits in its session


def test_a_copy_whose_session_is_still_listed_is_never_delivered_again():
    p = plan([copy(1)], {"mfp-1": "s1"}, {"mfp-1": "tenantprint-mfp-1"}, {}, NOW)
    assert (p.drop, p.cancel, p.redeliver) == ([], [], [])


def test_a_copy_goes_back_when_its_mfp_is_listed_anew_or_another_mfp_of_the_org_is_ready():
    # the same MFP in another session (it went and came back): delivered again through its queue
    p = plan([copy(1)], {"mfp-1": "s2"}, {"mfp-1": "tenantprint-mfp-1"}, {}, NOW)
    assert p.redeliver == [(1, "tenantprint-mfp-1")]
    # its MFP gone, another one of the org listed and ready
    p = plan([copy(1)], {"mfp-2": "t1"}, {"mfp-2": "tenantprint-mfp-2"}, {}, NOW)
    assert p.redeliver == [(1, "tenantprint-mfp-2")]
    # gone and nothing ready (no MFP, or its queue not trusted yet): it waits
    assert plan([copy(1)], {}, {}, {}, NOW).redeliver == []
    assert plan([copy(1)], {"mfp-1": "s2"}, {}, {}, NOW).redeliver == []


def test_a_job_never_delivered_goes_to_the_next_ready_queue():
    p = plan([copy(7, delivery=None)], {"mfp-1": "s1"}, {"mfp-1": "tenantprint-mfp-1"}, {}, NOW)
    assert p.redeliver == [(7, "tenantprint-mfp-1")]


def test_a_copy_without_a_session_stays_while_its_mfp_is_listed():
    assert plan([copy(1, session=None)], {"mfp-1": "s9"}, {"mfp-1": "q"}, {}, NOW).redeliver == []
    assert plan([copy(1, session=None)], {"mfp-2": "t"}, {"mfp-2": "q2"}, {}, NOW).redeliver == [(1, "q2")]


def test_a_kept_copy_that_is_not_held_is_held_again():
    pending = HeldCopy(1, "alice", "t", DeliveryNote(D1, "mfp-1"), "s1", NOW, processed=True, held=False)
    assert plan([pending], {"mfp-1": "s1"}, {"mfp-1": "q"}, {}, NOW).hold == [1]  # its session holds it
    assert plan([pending], {}, {}, {}, NOW).hold == [1]  # nowhere to go yet
    p = plan([pending], {"mfp-2": "t"}, {"mfp-2": "q2"}, {}, NOW)
    assert p.redeliver == [(1, "q2")] and p.hold == []  # on its way: released there, not held


def test_copies_are_bounded_in_age():
    p = plan([copy(1, first=NOW - h.MAX_AGE_S - 1), copy(2, first=NOW - h.MAX_AGE_S + 60)], {}, {}, {}, NOW)
    assert p.cancel == [(1, h.TOO_OLD_REASON)] and p.redeliver == []


_sessions = st.sampled_from(["s1", "s2", None])
_mfps = st.sampled_from(["mfp-1", "mfp-2"])


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([D1, D2, D3, None]), _mfps, _sessions,
                          st.floats(NOW - 2 * h.MAX_AGE_S, NOW)), max_size=8),
       st.dictionaries(_mfps, st.sampled_from(["s1", "s2"])), st.dictionaries(_mfps, st.just("q")),
       st.dictionaries(st.sampled_from([D1, D2, D3]), st.sampled_from(h.OUTCOME_STATES)))
def test_plan_invariants(specs, listing, ready, outcomes):
    copies = [copy(i, d, m, s, f) for i, (d, m, s, f) in enumerate(specs)]
    p = plan(copies, listing, ready, outcomes, NOW)
    acted = p.drop + [j for j, _ in p.cancel] + [j for j, _ in p.redeliver] + p.hold
    assert len(acted) == len(set(acted))  # at most one thing per copy
    for c in copies:
        moved = [q for j, q in p.redeliver if j == c.job_id]
        if moved:
            assert moved[0] in ready.values()  # only to a ready queue
            state = outcomes.get(c.note.delivery) if c.note else None
            assert state in (None, "released", "failed")  # never a job printed, deleted or expired
            assert state == "failed" or c.note is None or c.note.mfp not in listing or (
                c.session is not None and listing[c.note.mfp] != c.session)  # into its own session: only to retry
        if c.note and outcomes.get(c.note.delivery) == "printed":
            assert c.job_id in p.drop
        if c.note and outcomes.get(c.note.delivery) == "deleted":
            assert (c.job_id, h.DELETED_REASON) in p.cancel


def test_the_agents_memory_of_outcomes_is_bounded_and_checked():
    from org.desk_keeper import OutcomeMemory

    mem = OutcomeMemory(keep_s=60, limit=3)
    assert mem.add([{"delivery": D1, "state": "released"}, {"delivery": D2, "state": "lost"},
                    {"delivery": "x", "state": "deleted"}, "junk", {"delivery": D3}], NOW) == 1
    assert mem.states() == {D1: "released"}
    assert mem.add([{"delivery": D1, "state": "released"}], NOW) == 0  # nothing new
    mem.add([{"delivery": f"{i:032x}", "state": "deleted"} for i in range(5)], NOW)
    assert len(mem.states()) == 3 and D1 not in mem.states()  # the oldest forgotten first
    mem.add([{"delivery": D2, "state": "expired"}], NOW + 61)
    assert mem.states() == {D2: "expired"}  # older than keep_s


def test_a_failure_acted_on_is_not_undone_by_reading_it_again_but_a_later_one_counts():
    from org.desk_keeper import OutcomeMemory

    mem = OutcomeMemory()
    mem.add([{"delivery": D1, "state": "failed", "at": 5.0}], NOW)
    mem.consume(D1)
    assert mem.states() == {D1: h.REDELIVERED}
    assert mem.add([{"delivery": D1, "state": "failed", "at": 5.0}], NOW) == 0  # a desk restart reads it again
    assert mem.states() == {D1: h.REDELIVERED}
    mem.add([{"delivery": D1, "state": "released", "at": 6.0}], NOW)
    assert mem.add([{"delivery": D1, "state": "failed", "at": 7.0}], NOW) == 1  # failed again: retry again
    assert mem.states() == {D1: "failed"}


# -- the backend's side: a redelivery is signed with its delivery id, and a copy is kept ------------

class _Answerer:
    """A one-request IPP answerer on a socket (TCP loopback for the MFP, a unix path for the desk
    cupsd) that keeps the request and answers success (with job-id 42)."""

    def __init__(self, unix_path: str | None = None):
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(unix_path)
        else:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.request = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
            while len(body) < length:
                body += conn.recv(65536)
            self.head, self.request = head, body
            job = b"\x21\x00\x06job-id\x00\x04" + struct.pack(">i", 42)
            answer = struct.pack(">BBHI", 2, 0, 0, 1) + b"\x01\x02" + job + b"\x03"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)

    def close(self):
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def key_file(tmp_path):
    return str(desk_key.write(KEY, tmp_path / "keys" / "desk-key.json"))


def _run(tmp_path, key_file, monkeypatch, options: str, doc: bytes = b"%PDF-1.7 alice\n" * 100, copies: str = "1"):
    monkeypatch.setattr(db, "mfp_address", lambda v: v)
    mfp = _Answerer()
    desk = _Answerer(str(tmp_path / "cups.sock"))
    env = {"DEVICE_URI": f"tenantprint://127.0.0.1:{mfp.sock.getsockname()[1]}/printers/tenantprint"
                         "?session=abcdef0123456789",
           db.KEY_ENV: key_file, "FINAL_CONTENT_TYPE": "application/octet-stream",
           "PRINTER_LOCATION": "mfp-1.space-1", "CUPS_SERVER": str(tmp_path / "cups.sock")}
    code = db.cups_main(["7", "alice", "report.pdf", copies, options], env, io.BytesIO(doc))
    mfp.close()
    desk.close()
    return code, decode_response(mfp.request), decode_response(desk.request), desk


def _proof(sent) -> job_proof.ProofResult:
    proof = sent.groups[1][1][job_proof.ATTRIBUTE][0]
    return job_proof.verify(proof, [base64.b64decode(KEY.public_b64)], **JOB,
                            document_sha256=hashlib.sha256(b"%PDF-1.7 alice\n" * 100).digest(), now=time.time(),
                            seen_nonces=set())


def test_a_first_delivery_leaves_a_held_raw_copy_as_its_user(tmp_path, key_file, monkeypatch, capsys):
    code, sent, kept, desk = _run(tmp_path, key_file, monkeypatch, "", copies="2")
    assert code == db.EXIT_OK, capsys.readouterr().err
    result = _proof(sent)
    assert result.valid and result.delivery == result.nonce
    op, job = kept.groups[0][1], kept.groups[1][1]
    assert b"Authorization" not in desk.head  # no credentials: the copy stays alice's
    assert op["printer-uri"] == ["ipp://localhost/printers/tenantprint-held"]
    assert op["requesting-user-name"] == ["alice"] and op["job-name"] == ["report.pdf"]
    assert op["document-format"] == ["application/vnd.cups-raw"]
    assert job["job-hold-until"] == ["indefinite"] and job["copies"] == [2]
    assert job[h.DELIVERY_ATTRIBUTE] == [f"{result.delivery}/mfp-1.space-1"]
    assert job[h.SESSION_ATTRIBUTE] == ["abcdef0123456789"]
    assert desk.request.endswith(b"%PDF-1.7 alice\n" * 100)  # the very bytes the MFP got
    assert "copy kept as job 42 of tenantprint-held" in capsys.readouterr().err
    # what CUPS will hand the backend when this copy is moved to an MFP queue
    again = h.redelivery({k: v[0] for k, v in job.items() if k.startswith("tenantprint-")}, TAG_KEY, **JOB)
    assert again is not None and again.note.delivery == result.delivery


def test_a_redelivery_keeps_its_delivery_id_and_format_and_a_forged_one_does_not(tmp_path, key_file, monkeypatch):
    opts = _options(DeliveryNote(D1, "mfp-0"), fmt="application/pdf")
    options = " ".join(f"{k}={v}" for k, v in opts.items()) + " job-uuid=urn:uuid:x"
    code, sent, kept, _ = _run(tmp_path, key_file, monkeypatch, options)
    result = _proof(sent)
    assert code == db.EXIT_OK and result.valid and result.delivery == D1 and result.nonce != D1
    assert sent.groups[0][1]["document-format"] == ["application/pdf"]  # as first sent, not raw
    job = kept.groups[1][1]
    assert job[h.DELIVERY_ATTRIBUTE] == [f"{D1}/mfp-1.space-1"]  # now at the MFP it went to this time
    assert h.tag_first(job[h.TAG_ATTRIBUTE][0]) == 1_799_999_000  # the age counts from the first one

    os.unlink(tmp_path / "cups.sock")
    forged = options.replace(opts[h.TAG_ATTRIBUTE], "1799999000." + "0" * 32)
    code, sent, _, _ = _run(tmp_path, key_file, monkeypatch, forged)
    assert code == db.EXIT_OK and _proof(sent).delivery not in (None, D1)


def test_no_copy_no_failure_and_the_holding_queue_never_sends(tmp_path, key_file, monkeypatch, capsys):
    monkeypatch.setattr(db, "mfp_address", lambda v: v)
    mfp = _Answerer()
    env = {"DEVICE_URI": f"tenantprint://127.0.0.1:{mfp.sock.getsockname()[1]}/printers/tenantprint",
           db.KEY_ENV: key_file, "CUPS_SERVER": str(tmp_path / "no-such.sock")}
    assert db.cups_main(["7", "alice", "t", "1", ""], env, io.BytesIO(b"x")) == db.EXIT_OK
    mfp.close()
    err = capsys.readouterr().err
    assert err.startswith("WARNING:") and "could not keep its copy" in err
    held = {"DEVICE_URI": h.HELD_DEVICE_URI, db.KEY_ENV: key_file}
    assert db.cups_main(["7", "alice", "t", "1", ""], held, io.BytesIO(b"x")) == db.EXIT_STOP
    assert "never prints" in capsys.readouterr().err
    with pytest.raises(ValueError):
        db.parse_device_uri(h.HELD_DEVICE_URI)  # and no address a send could go to
