"""The lab's print engine (ippeveprinter on the office host) in its variants: the formats it takes,
paper out and back through its media form (jobs wait while a tray is empty), and what the lab's
status reports of it and of what it printed (pages counted from the kept file, the engine's
job-state)."""

from __future__ import annotations

import subprocess
import time

import pytest

from hal.printer.ipp import IppError, call, encode_print_job, get_printer_attributes
from lab.poll import wait_for
from lab.services.engine import (
    ENGINE_FORMATS, TRAY_SHEETS, EngineService, engine_jobs, engine_state, engine_uri, on_office, printed_documents,
    reason_keywords, set_media_level,
)
from prereq import need_binary

PAGES = 3
POSTSCRIPT = b"""%!PS
/Helvetica findfont 24 scalefont setfont
1 1 3 { /n exch def 72 700 moveto (Page ) show n 3 string cvs show showpage } for
"""
# What a converter on the Pi sends: 8-bit grey at a resolution the variant advertises.
GS = {"application/pdf": ["-sDEVICE=pdfwrite"],
      "image/pwg-raster": ["-sDEVICE=pwgraster", "-r300", "-dcupsColorSpace=18", "-dcupsBitsPerColor=8"],
      "image/urf": ["-sDEVICE=urf", "-r600", "-dcupsColorSpace=18", "-dcupsBitsPerColor=8"]}
TITLE_OFF = 'before "off" \\ [é]'  # a desk's title is any text: the record must keep it as it is
SENT = {"pdf": "application/pdf", "pwg-only": "image/pwg-raster", "urf-only": "image/urf"}


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> dict[str, bytes]:
    """The same 3-page document as PDF, PWG raster and URF."""
    need_binary("gs", "pdfinfo")
    d = tmp_path_factory.mktemp("engine-docs")
    (d / "three.ps").write_bytes(POSTSCRIPT)
    out = {}
    for kind, args in GS.items():
        src = d / "three.ps" if kind == "application/pdf" else d / "three.pdf"
        dst = d / ("three.pdf" if kind == "application/pdf" else f"three.{kind.split('/')[1]}")
        subprocess.run(["gs", "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", *args, f"-sOutputFile={dst}", str(src)],
                       check=True, capture_output=True, timeout=60)
        out[kind] = dst.read_bytes()
    return out


@pytest.fixture(scope="module")
def engine_lab(lab):
    need_binary("ippeveprinter", "dbus-daemon")
    yield lab
    EngineService().stop(lab)


def _print(lab, data: bytes, document_format: str, title: str) -> int:
    body = encode_print_job(engine_uri(lab), "alice", title, document_format) + data
    answer = on_office(lab, lambda: call(engine_uri(lab), body, read_timeout=10.0))
    return answer.attributes["job-id"][0]


def _printed(lab, title: str) -> list[dict]:
    return [p for p in printed_documents(lab) if p["title"] == title]


@pytest.mark.parametrize("variant", list(ENGINE_FORMATS))
def test_variant_advertises_its_formats_and_prints_them(engine_lab, documents, variant):
    lab = engine_lab
    EngineService(variant).start(lab)  # a running engine of another variant is restarted
    state = engine_state(lab)
    assert state["variant"] == variant and state["running"] and state["state"] == "idle"
    assert reason_keywords(state["reasons"]) == {"none"}
    # ippeveprinter adds application/octet-stream (it sniffs such a document and checks what it is)
    assert set(state["formats"]) - {"application/octet-stream"} == set(ENGINE_FORMATS[variant])
    attrs = on_office(lab, lambda: get_printer_attributes(engine_uri(lab), [
        "pwg-raster-document-resolution-supported", "pwg-raster-document-type-supported", "urf-supported"]))
    takes_pwg = "image/pwg-raster" in ENGINE_FORMATS[variant]
    assert ("pwg-raster-document-type-supported" in attrs) == takes_pwg
    assert ("pwg-raster-document-resolution-supported" in attrs) == takes_pwg
    assert ("urf-supported" in attrs) == (variant == "urf-only")
    if variant == "urf-only":
        assert {"W8", "RS600"} <= set(attrs["urf-supported"])

    title = f"three-{variant}"
    job = _print(lab, documents[SENT[variant]], SENT[variant], title)
    done = wait_for(lambda: _printed(lab, title) and
                    [j for j in engine_jobs(lab) if j["id"] == job and j["state"] == "completed"], 10,
                    "the job completed at the engine")
    assert done[0]["user"] == "alice" and done[0]["format"] == SENT[variant]
    (doc,) = _printed(lab, title)
    assert doc["job_id"] == job and doc["pages"] == PAGES and doc["job_state"] == "completed"
    assert doc["detected_format"] == SENT[variant] and doc["format"] == SENT[variant]

    if variant != "pdf":  # a printer that needs the Pi to convert refuses a PDF, even one sent as "any"
        for claimed in ("application/pdf", "application/octet-stream"):
            with pytest.raises(IppError, match="0x040b"):  # attributes-or-values-not-supported
                _print(lab, documents["application/pdf"], claimed, f"refused-{variant}")


def test_paper_out_holds_the_job_until_paper_is_back(engine_lab, documents):
    lab = engine_lab
    EngineService("pwg-only").start(lab)
    try:
        reasons = set_media_level(lab, 0)
        assert "media-empty" in reason_keywords(reasons)
        job = _print(lab, documents["image/pwg-raster"], "image/pwg-raster", "paper-out")
        waiting = wait_for(lambda: (s := engine_state(lab))["state"] == "processing"
                           and "media-needed" in reason_keywords(s["reasons"]) and s, 5, "the engine to ask for paper")
        assert {"media-empty", "media-needed"} <= reason_keywords(waiting["reasons"])
        assert [j["state"] for j in waiting["jobs"] if j["id"] == job] == ["processing"]
        time.sleep(1.2)  # ippeveprinter looks for paper once a second: the job must still wait
        assert _printed(lab, "paper-out") == []
    finally:
        reasons = set_media_level(lab, TRAY_SHEETS)
    assert "media-empty" not in reason_keywords(reasons)
    wait_for(lambda: _printed(lab, "paper-out"), 5, "the job printed once paper is back")
    wait_for(lambda: engine_state(lab)["state"] == "idle", 5, "the engine idle")
    (doc,) = _printed(lab, "paper-out")
    assert doc["pages"] == PAGES
    state = engine_state(lab)
    assert reason_keywords(state["reasons"]) == {"none"}
    assert [j["state"] for j in state["jobs"] if j["id"] == job] == ["completed"]


def test_switched_off_engine_is_off_in_status_and_its_records_stay(engine_lab, documents):
    lab = engine_lab
    service = EngineService("pdf")
    service.start(lab)
    job = _print(lab, documents["application/pdf"], "application/pdf", TITLE_OFF)
    wait_for(lambda: _printed(lab, TITLE_OFF), 10, "the job printed")
    service.switch_off(lab)
    state = service.status(lab)
    assert state["running"] is False and state["state"] == "off"
    assert state["reasons"] == [] and state["formats"] == [] and state["jobs"] == []
    (doc,) = _printed(lab, TITLE_OFF)
    assert doc["job_id"] == job and doc["job_state"] == "completed"  # from the record: the engine is gone
    service.start(lab)
    # job ids start again at 1: the new engine's job with the old id is not the old record's job
    again = _print(lab, documents["application/pdf"], "application/pdf", "after-on")
    wait_for(lambda: _printed(lab, "after-on"), 10, "the job printed")
    assert again <= job
    (old,) = _printed(lab, TITLE_OFF)
    (new,) = _printed(lab, "after-on")
    assert old["instance"] != new["instance"] and old["file"] != new["file"]
    assert old["pages"] == new["pages"] == PAGES
