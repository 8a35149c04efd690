"""The engine spool's bookkeeping (hal/printer/engine.py) against a minimal local IPP responder:
a job the engine took before a daemon restart is followed, never sent again; a job the engine lost
is sent again; records that do not parse are dropped."""

import http.server
import struct
import threading
from pathlib import Path

from hal.printer.engine import PrintEngine, ReleasedJob
from hal.printer.ipp import encode_attribute


class _Engine(http.server.BaseHTTPRequestHandler):
    """Answers Print-Job with job 41 and Get-Job-Attributes with the jobs it knows (completed)."""
    known: dict[int, str] = {}
    prints: list[str] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        op = struct.unpack(">H", body[2:4])[0]
        out = struct.pack(">BBHI", 2, 0, 0, 1) + b"\x01"
        out += encode_attribute(0x47, "attributes-charset", b"utf-8")
        out += encode_attribute(0x48, "attributes-natural-language", b"en")
        if op == 0x000B:  # Get-Printer-Attributes: idle, takes PDF
            out += b"\x04" + encode_attribute(0x23, "printer-state", struct.pack(">i", 3))
            out += encode_attribute(0x49, "document-format-supported", b"application/pdf")
        elif op == 0x0002:
            title = body.split(b"job-name", 1)[1][2:].split(b"I", 1)[0]  # enough for our titles
            _Engine.prints.append(title.decode(errors="replace"))
            _Engine.known[41] = "Report"
            out += b"\x02" + encode_attribute(0x21, "job-id", struct.pack(">i", 41))
        else:
            job_id = struct.unpack(">i", body.split(b"job-id", 1)[1][2:6])[0]
            if job_id not in _Engine.known:
                out = struct.pack(">BBHI", 2, 0, 0x0406, 1) + b"\x01" + out[9:]
            else:
                out += b"\x02" + encode_attribute(0x23, "job-state", struct.pack(">i", 9))
                out += encode_attribute(0x42, "job-name", _Engine.known[job_id].encode())
        out += b"\x03"
        self.send_response(200)
        self.send_header("Content-Type", "application/ipp")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def _serve(tmp_path: Path, records: list[ReleasedJob]):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    engine = PrintEngine(f"ipp://127.0.0.1:{server.server_address[1]}/ipp/print", tmp_path / "spool",
                         poll_s=0.01, retry_s=0.05)
    doc = tmp_path / "doc.pdf"
    doc.write_bytes(b"%PDF-1.4 report")
    for job in records:
        engine.spool.take(job, doc)
    outcomes, stop = [], threading.Event()

    def report(o):
        outcomes.append(o)
        stop.set()

    engine.resume()
    t = threading.Thread(target=engine.serve, args=(stop, report), daemon=True)
    t.start()
    t.join(10)
    server.shutdown()
    return engine, outcomes


def _job(**kw) -> ReleasedJob:
    return ReleasedJob(tag="3-7", session=3, org="acme", job_id=7, user="alice", title="Report",
                       document_format="application/pdf", released_at=1.0, **kw)


def test_a_job_the_engine_took_before_a_restart_is_followed_not_sent_again(tmp_path):
    _Engine.known, _Engine.prints = {12: "Report"}, []
    engine, outcomes = _serve(tmp_path, [_job(engine_job=12)])
    assert [(o.printed, o.state) for o in outcomes] == [(True, "completed")]
    assert _Engine.prints == [] and list((tmp_path / "spool").iterdir()) == []


def test_a_job_the_engine_lost_is_sent_again_and_its_id_recorded(tmp_path):
    _Engine.known, _Engine.prints = {}, []
    engine, outcomes = _serve(tmp_path, [_job(engine_job=12)])  # the engine restarted: 12 unknown
    assert [(o.printed, o.state) for o in outcomes] == [(True, "completed")]
    assert len(_Engine.prints) == 1


def test_an_unreadable_record_is_dropped_and_a_stray_document_removed(tmp_path):
    engine = PrintEngine("ipp://127.0.0.1:9/ipp/print", tmp_path / "spool")
    engine.spool.prepare()
    (tmp_path / "spool" / "1-1.json").write_text("{not json")
    (tmp_path / "spool" / "2-2.doc").write_bytes(b"orphan")
    assert engine.resume() == []
    assert list((tmp_path / "spool").iterdir()) == []
