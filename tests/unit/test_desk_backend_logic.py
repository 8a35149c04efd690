"""The desk's signing backend (org/desk_backend.py) and the desk agent's listing checks.

The backend's job path runs against a scripted IPP answerer on loopback (the real cupsd is in
tests/integration/test_desk_backend.py)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import struct
import threading

import pytest

from hal.printer import job_proof
from hal.printer.ipp import decode_response
from org import desk_backend as db
from org import desk_key
from org.desk_agent import checked_mfps, wanted_queues

KEY = desk_key.generate("acme")


@pytest.mark.parametrize("vip", ["10.20.0.200", "2001:db8::5", "192.0.2.9"])
def test_usable_virtual_ips(vip):
    assert db.mfp_address(vip) == vip


@pytest.mark.parametrize("vip", [
    "127.0.0.1", "::1", "169.254.1.1", "fe80::1", "224.0.0.1", "ff02::1", "0.0.0.0", "::", "240.0.0.1",
    "10.20.0.200/24", "10.20.0.200:631", "evil.example", "10.20.0.200@x", "1.2.3.4/printers/x#",
    "fe80::1%eth0", "", " 10.20.0.200", None, 167772360, ["10.20.0.200"],
])
def test_unusable_virtual_ips_are_refused(vip):
    with pytest.raises(ValueError):
        db.mfp_address(vip)


def test_the_listing_is_checked_entry_by_entry():
    listing = [{"id": "mfp-1.space-1", "virtual_ip": "10.20.0.200", "session": "not hex"},
               {"id": "mfp-2", "virtual_ip": "127.0.0.1"},
               {"id": "mfp-3", "virtual_ip": "10.20.0.201/printers/../admin"},
               {"id": "bad\nid", "virtual_ip": "10.20.0.202"},
               {"id": None, "virtual_ip": "10.20.0.203"}, "junk", 5]
    assert checked_mfps(listing) == [{"id": "mfp-1.space-1", "virtual_ip": "10.20.0.200", "session": ""}]
    assert checked_mfps({"id": "x"}) == [] and checked_mfps(None) == []


def test_wanted_queues_print_through_the_signing_backend():
    want = wanted_queues([{"id": "mfp-1.space-1", "virtual_ip": "10.20.0.200"},
                          {"id": "mfp-x", "virtual_ip": "0.0.0.0"}], "/printers/tenantprint")
    (q,) = want.values()
    assert q.name == "tenantprint-mfp-1_space-1"
    assert q.uri == "ipp://10.20.0.200:631/printers/tenantprint"
    assert q.device_uri == "tenantprint://10.20.0.200:631/printers/tenantprint"
    # the MFP's session, when the gateway names one, reaches the backend in the URI's query
    (s,) = wanted_queues([{"id": "mfp-1", "virtual_ip": "10.20.0.200", "session": "0123456789abcdef"}],
                         "/printers/tenantprint").values()
    assert s.device_uri == "tenantprint://10.20.0.200:631/printers/tenantprint?session=0123456789abcdef"
    assert db.parse_device_uri(s.device_uri).resource == "/printers/tenantprint"
    assert db.device_session(s.device_uri) == "0123456789abcdef" and db.device_session(q.device_uri) is None
    # an MFP whose id would name the holding queue gets another name
    (h,) = wanted_queues([{"id": "held", "virtual_ip": "10.20.0.200"}], "/printers/tenantprint").values()
    assert h.name == "tenantprint-held-mfp"


@pytest.mark.parametrize("uri", [
    "ipp://10.20.0.200:631/printers/tenantprint", "tenantprint://127.0.0.1:631/printers/tenantprint",
    "tenantprint://u:p@10.20.0.200/printers/tenantprint", "tenantprint://10.20.0.200/admin",
    "tenantprint://10.20.0.200/printers/../admin", "tenantprint:///printers/tenantprint", "",
])
def test_bad_device_uris_are_refused(uri):
    with pytest.raises(ValueError):
        db.parse_device_uri(uri)


def test_device_uri_round_trip():
    uri = db.device_uri("10.20.0.200", 631, "/printers/tenantprint")
    assert db.parse_device_uri(uri + "?waitjob=false") == db.Target("10.20.0.200", 631, "/printers/tenantprint")
    assert db.parse_device_uri(db.device_uri("2001:db8::5", 8631, "/ipp/print")).printer_uri == \
        "ipp://[2001:db8::5]:8631/ipp/print"


def test_print_job_request_carries_owner_title_format_and_proof_in_the_job_group():
    head = db.encode_print_job("ipp://10.20.0.200:631/printers/tenantprint", user="alice", title="r.pdf",
                               document_format="application/pdf", proof="v1.x", copies=2)
    req = decode_response(head)  # same framing as an answer: the operation sits where the status does
    assert req.status == db.PRINT_JOB
    (op_tag, op), (job_tag, job) = req.groups
    assert (op_tag, job_tag) == (1, 2)
    assert op["requesting-user-name"] == ["alice"] and op["job-name"] == ["r.pdf"]
    assert op["document-format"] == ["application/pdf"]
    assert job == {job_proof.ATTRIBUTE: ["v1.x"], "copies": [2]}


class _Mfp:
    """A loopback IPP answerer that keeps the request it got and answers with `status`."""

    def __init__(self, status: int = 0x0000, http_status: int = 200, extra: bytes = b""):
        outer = self
        self.body = b""

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                outer.body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = struct.pack(">BBHI", 2, 0, status, 1) + b"\x01\x03" + extra
                self.send_response(http_status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *a):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.handle_request, daemon=True).start()

    def close(self):
        self.server.server_close()


@pytest.fixture
def key_file(tmp_path):
    return str(desk_key.write(KEY, tmp_path / "keys" / "desk-key.json"))


def _env(port: int, key: str, **extra) -> dict:
    return {"DEVICE_URI": f"tenantprint://127.0.0.1:{port}/printers/tenantprint",
            db.KEY_ENV: key, "FINAL_CONTENT_TYPE": "application/pdf", **extra}


def test_a_job_is_sent_with_a_proof_the_mfp_can_verify(key_file, monkeypatch, capsys):
    monkeypatch.setattr(db, "mfp_address", lambda v: v)  # loopback stands in for the MFP here
    mfp = _Mfp()
    doc = b"%PDF-1.7 alice's report\n" * 1000
    code = db.cups_main(["7", "alice", "report.pdf", "1", ""], _env(mfp.port, key_file), io.BytesIO(doc))
    mfp.close()
    assert code == db.EXIT_OK, capsys.readouterr().err
    req = decode_response(mfp.body)
    op, job = req.groups[0][1], req.groups[1][1]
    assert mfp.body.endswith(doc)
    proof = job[job_proof.ATTRIBUTE][0]
    assert len(proof) <= job_proof.MAX_LEN
    result = job_proof.verify(proof, [bytes.fromhex(_raw_hex(KEY))], org="acme", user=op["requesting-user-name"][0],
                              title=op["job-name"][0], document_sha256=hashlib.sha256(doc).digest(),
                              now=__import__("time").time(), seen_nonces=set())
    assert result.valid
    err = capsys.readouterr().err
    assert proof not in err and "private" not in err


def _raw_hex(key) -> str:
    import base64

    return base64.b64decode(key.public_b64).hex()


@pytest.mark.parametrize("status, http_status, code", [
    (0x0400, 200, db.EXIT_CANCEL),  # the MFP refused this job
    (0x0401, 200, db.EXIT_CANCEL),
    (0x0506, 200, db.EXIT_RETRY),  # server busy: keep the job at the desk
    (0x0000, 503, db.EXIT_RETRY),
    (0x0000, 403, db.EXIT_CANCEL),
])
def test_exit_codes_follow_the_mfps_answer(key_file, monkeypatch, status, http_status, code):
    monkeypatch.setattr(db, "mfp_address", lambda v: v)
    mfp = _Mfp(status, http_status)
    assert db.cups_main(["7", "alice", "t", "1", ""], _env(mfp.port, key_file), io.BytesIO(b"x")) == code
    mfp.close()


def test_an_oversized_answer_is_not_read_whole(key_file, monkeypatch):
    monkeypatch.setattr(db, "mfp_address", lambda v: v)
    mfp = _Mfp(extra=b"\0" * (db.MAX_ANSWER + 10))
    assert db.cups_main(["7", "alice", "t", "1", ""], _env(mfp.port, key_file), io.BytesIO(b"x")) == db.EXIT_RETRY
    mfp.close()


def test_an_unreachable_mfp_keeps_the_job_at_the_desk(key_file, monkeypatch):
    monkeypatch.setattr(db, "mfp_address", lambda v: v)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(port, key_file)
    assert db.cups_main(["7", "alice", "t", "1", ""], env, io.BytesIO(b"x")) == db.EXIT_RETRY


def test_no_key_or_an_open_key_stops_the_queue(tmp_path, key_file):
    env = {"DEVICE_URI": "tenantprint://10.20.0.200:631/printers/tenantprint", "FINAL_CONTENT_TYPE": "application/pdf"}
    assert db.cups_main(["7", "alice", "t", "1", ""], {**env, db.KEY_ENV: str(tmp_path / "none")},
                        io.BytesIO(b"x")) == db.EXIT_STOP
    os.chmod(key_file, 0o644)
    assert db.cups_main(["7", "alice", "t", "1", ""], {**env, db.KEY_ENV: key_file}, io.BytesIO(b"x")) == db.EXIT_STOP


def test_a_bad_call_fails_and_no_arguments_lists_the_scheme(capsys):
    assert db.cups_main(["7", "alice"], {}, io.BytesIO(b"")) == db.EXIT_FAILED
    assert db.cups_main([], {}) == db.EXIT_OK
    assert capsys.readouterr().out.startswith("network tenantprint ")


def test_installed_backend_is_root_only(tmp_path):
    path = db.install(tmp_path, key_file="/run/x/desk-key.json", python="/opt/py/bin/python")
    assert path.name == "tenantprint" and (path.stat().st_mode & 0o777) == 0o700
    text = path.read_text()
    assert "TP_DESK_KEY='/run/x/desk-key.json' exec '/opt/py/bin/python' -I -m org.desk_backend \"$@\"" in text


def test_key_file_round_trip_and_refusals(tmp_path):
    path = desk_key.write(KEY, tmp_path / "k" / "desk-key.json")
    assert (path.stat().st_mode & 0o777) == 0o600 and (path.parent.stat().st_mode & 0o777) == 0o700
    loaded = desk_key.load(path)
    assert loaded.org_id == "acme" and loaded.public_b64 == KEY.public_b64
    assert "private_key" not in repr(loaded) or "Ed25519" not in repr(loaded)
    with pytest.raises(FileExistsError):
        desk_key.write(KEY, path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"org_id": "acme", "private_key": "AAAA"}')
    os.chmod(bad, 0o600)
    with pytest.raises(desk_key.DeskKeyError) as err:
        desk_key.load(bad)
    assert "AAAA" not in str(err.value)
