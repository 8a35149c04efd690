"""The desk's signing backend against real daemons: a desk cupsd sends through `tenantprint://` to a
session cupsd (hal/printer/cupsd.SessionPrintService, as the MFP runs it) and the held job carries
an owner proof that verifies over the document the MFP spooled (issue 13).

The desk cupsd (lab/services/org_agents.DeskService, its own ServerBin with the backend, the org's
desk key in its host's private /run) runs on `cowork`, which reaches the MFP's office address
directly: this module tests the backend and cupsd, not the tunnel (tests/integration/
test_org_agents.py prints through the tunnel with the same backend).
"""

from __future__ import annotations

import hashlib
import shutil
import time

import pytest

from hal.printer import INBOUND_QUEUE
from hal.printer import job_proof
from hal.printer.cupsd import SessionPrintService, model_built
from lab.orgs import desk_key
from lab.poll import wait_for
from lab.services.engine import EngineService, engine_uri
from lab.services.org_agents import DESK_KEY_FILE, DeskService, _connection, desk_queues, print_file
from prereq import need_binary

ORG = "acme"
MFP = "10.77.0.10:631"
QUEUE = "tenantprint-mfp-test"
DOC = "/usr/share/cups/data/default-testpage.pdf"


@pytest.fixture(scope="module")
def mfp(lab):
    need_binary("cupsd", "ippeveprinter", "dbus-daemon")
    engine = EngineService()
    engine.start(lab)
    d = lab.layout.data_dir("desk-backend-session")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    ps = SessionPrintService(d, [MFP], engine_uri(lab), command_prefix=lab.host("office").argv([]))
    ps.start()
    try:
        yield ps
    finally:
        ps.stop()
        engine.stop(lab)


@pytest.fixture(scope="module")
def desk(lab, mfp):
    svc = DeskService(ORG, host_name="cowork", agent=False)
    svc.start(lab)
    try:
        yield svc
    finally:
        svc.stop(lab)


def _add_queue(lab) -> str:
    """As the desk agent does: add with ipp:// (CUPS builds the model only from it), disabled and
    rejecting, then switch to tenantprint:// and enable. Returns the model."""
    conn = _connection(lab, ORG)
    conn.addPrinter(QUEUE, device=f"ipp://{MFP}/printers/{INBOUND_QUEUE}", ppdname="everywhere")
    conn.rejectJobs(QUEUE)
    conn.disablePrinter(QUEUE)
    model = wait_for(lambda: (m := desk_queues(lab, ORG)[QUEUE]["model"]) and model_built(m) and m, 20,
                   "CUPS to build the queue's model")
    conn.setPrinterDevice(QUEUE, f"tenantprint://{MFP}/printers/{INBOUND_QUEUE}")
    conn.enablePrinter(QUEUE)
    conn.acceptJobs(QUEUE)
    return model


def test_a_desk_job_arrives_held_with_a_proof_over_the_spooled_document(lab, mfp, desk):
    model = _add_queue(lab)
    q = desk_queues(lab, ORG)[QUEUE]
    # Changing the device URI keeps the PPD CUPS built: the model is the same, the URI ours.
    assert q["model"] == model and q["uri"] == f"tenantprint://{MFP}/printers/{INBOUND_QUEUE}"
    key_file = lab.host("cowork").path(DESK_KEY_FILE)
    assert key_file.stat().st_mode & 0o077 == 0 and key_file.parent.stat().st_mode & 0o077 == 0

    job = print_file(lab, ORG, "alice", DOC, queue=QUEUE, title="Quarterly report")
    held = wait_for(mfp.held_jobs, 30, "the job held at the MFP")
    assert [(j.user, j.title) for j in held] == [("alice", "Quarterly report")]
    desk_state = wait_for(lambda: (s := _connection(lab, ORG).getJobAttributes(job)["job-state"]) >= 7 and s, 20,
                        "the desk job to finish")
    assert desk_state == 9  # completed at the desk: the MFP holds it

    # What the firmware will check: the proof attribute cupsd kept, over the document it spooled.
    jid = held[0].id
    attrs = mfp_attrs(mfp, jid)
    proof = attrs.get(job_proof.ATTRIBUTE)
    assert isinstance(proof, str) and proof.startswith("v2."), attrs
    spooled = (mfp.dir / "spool" / f"d{jid:05d}-001").read_bytes()
    public = __import__("base64").b64decode(desk_key(lab, ORG).public_b64)
    result = job_proof.verify(proof, [public], org=ORG, user=attrs["job-originating-user-name"],
                              title=attrs["job-name"], document_sha256=hashlib.sha256(spooled).digest(),
                              now=time.time(), seen_nonces=set())
    assert result.valid, result
    # The proof is bound to this job: as bob, or over another document, it does not verify.
    assert not job_proof.verify(proof, [public], org=ORG, user="bob", title=attrs["job-name"],
                                document_sha256=hashlib.sha256(spooled).digest(), now=time.time(),
                                seen_nonces=set()).valid
    # The key never left the desk host: not in the MFP's session tree, not in the desk's CUPS tree.
    secret = desk_key(lab, ORG)
    from org.desk_key import to_json

    raw_b64 = __import__("json").loads(to_json(secret))["private_key"]
    for tree in (mfp.dir, lab.layout.data_dir(desk.name)):
        for f in tree.rglob("*"):
            if f.is_file() and not f.is_symlink():
                assert raw_b64.encode() not in f.read_bytes(), f


def mfp_attrs(mfp, job_id: int) -> dict:
    import cups

    cups.setServer(str(mfp.socket_path))
    return cups.Connection().getJobAttributes(job_id)
