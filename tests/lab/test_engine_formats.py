"""The printer for real (issue 16), on a lab whose engine takes PWG raster only (`--engine
pwg-only`, a stand-in for a low-end driverless laser): a PDF from the desk is rasterized on the MFP
and comes out whole; a printer out of paper holds the released job, the panel says so, and it counts
printed only once the engine completed it; the engine's state is in the status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.poll import wait_for
from prereq import need_binary, need_root

PREFIX = "tpfm"
DATA = Path("/usr/share/cups/data")


def cli(*args: str) -> dict:
    env = dict(os.environ, TP_LAB_PREFIX=PREFIX)
    proc = subprocess.run([sys.executable, "-m", "tenantprint", "lab", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"lab {args}: not JSON (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-2000:]}")
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def pwg_lab(tmp_path_factory):
    need_root()
    need_binary("charon-systemd", "cupsd", "pcscd", "freeradius", "ippeveprinter", "gs")
    docs = tmp_path_factory.mktemp("docs")
    docs.chmod(0o755)  # the desk's cupsd reads the file as lp
    three = docs / "three-pages.pdf"
    subprocess.run(["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=pdfwrite", f"-sOutputFile={three}",
                    str(DATA / "default-testpage.pdf"), str(DATA / "standard.pdf"), str(DATA / "default.pdf")],
                   check=True, capture_output=True)
    three.chmod(0o644)
    subprocess.run([sys.executable, "-m", "tenantprint", "lab", "down"], env=dict(os.environ, TP_LAB_PREFIX=PREFIX),
                   capture_output=True)
    cli("up", "--engine", "pwg-only")
    yield three
    cli("fault", "engine-media-ok")
    assert cli("down")["leftovers"] == {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}


def _held(st) -> list[str]:
    return [j["user"] for j in st["firmware"]["held_jobs"]]


def _print_and_hold(doc: Path) -> int:
    st = cli("tap", "--org", "acme", "--user", "alice")
    assert st["state"] == "ready"
    wait_for(lambda: cli("status")["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(cli("status")["printed"])
    cli("print", "--org", "acme", "--user", "alice", "--from", "desk", str(doc))
    wait_for(lambda: _held(cli("status")) == ["alice"], 20, "alice's job held")
    return before


def test_the_engine_and_its_formats_are_in_the_status(pwg_lab):
    st = cli("status")
    engine = st["engine"]
    assert engine["formats"] and "application/pdf" not in engine["formats"] and "image/pwg-raster" in engine["formats"]
    assert engine["state"] in ("idle", "processing") and isinstance(engine["jobs"], list)
    fw = wait_for(lambda: (f := cli("status")["firmware"]["engine"])["raster"] and f, 15, "the firmware's look at the engine")
    assert fw["raster"]["format"] == "image/pwg-raster" and fw["reachable"] is True and fw["condition"] == ""


def test_a_pdf_comes_out_as_pwg_raster_with_every_page(pwg_lab):
    before = _print_and_hold(pwg_lab)
    cli("tap", "--org", "acme", "--user", "alice")
    printed = wait_for(lambda: cli("status")["printed"][before:], 30, "alice's document at the engine")
    assert [(p["user"], p["format"], p["pages"]) for p in printed] == [("alice", "image/pwg-raster", 3)]
    assert printed[0]["detected_format"] == "image/pwg-raster"
    st = wait_for(lambda: (s := cli("status"))["firmware"]["engine"]["pending"] == [] and s, 15, "the job ended")
    assert st["firmware"]["engine"]["ended"][-1]["state"] == "completed"
    assert [p["job_state"] for p in st["printed"][before:]] == ["completed"]
    # asked to purge the job's history, ippeveprinter keeps it (a minute): counted, not hidden
    assert st["firmware"]["engine"]["history_kept"] >= 1


def test_paper_out_holds_a_released_job_says_so_and_it_counts_printed_once_paper_is_back(pwg_lab):
    before = _print_and_hold(pwg_lab)
    ended_before = len(cli("status")["firmware"]["engine"]["ended"])
    cli("fault", "engine-media-empty")
    try:
        cli("tap", "--org", "acme", "--user", "alice")  # her release
        st = wait_for(lambda: "Paper out" in (s := cli("status"))["firmware"]["panel"] and s, 20, "paper out on the panel")
        assert [j["user"] for j in st["firmware"]["printing"]] == ["alice"]
        assert st["firmware"]["engine"]["condition"] == "printer-paper-out"
        assert len(st["printed"]) == before and len(st["firmware"]["engine"]["ended"]) == ended_before
        assert "media-empty" in " ".join(st["engine"]["reasons"])
    finally:
        cli("fault", "engine-media-ok")
    wait_for(lambda: len(cli("status")["printed"]) > before, 30, "alice's document once paper is back")
    st = wait_for(lambda: (s := cli("status"))["firmware"]["engine"]["pending"] == [] and s, 15, "the job ended")
    assert [p["user"] for p in st["printed"][before:]] == ["alice"]  # once
    ended = st["firmware"]["engine"]["ended"][ended_before:]
    assert [(e["state"], e["printed"]) for e in ended] == [("completed", True)]  # counted once, when completed
    wait_for(lambda: "Paper out" not in cli("status")["firmware"]["panel"], 10, "the panel without paper out")


def test_a_job_the_engine_aborted_goes_back_to_its_desk_and_prints_with_the_next_release(pwg_lab):
    before = _print_and_hold(pwg_lab)
    ended_before = len(cli("status")["firmware"]["engine"]["ended"])
    cli("fault", "engine-jam-next")
    cli("tap", "--org", "acme", "--user", "alice")  # released: the engine aborts it
    st = wait_for(lambda: len((s := cli("status"))["firmware"]["engine"]["ended"]) > ended_before and s, 20,
                  "the job's end at the engine")
    assert [(e["state"], e["printed"]) for e in st["firmware"]["engine"]["ended"][ended_before:]] == [("aborted", False)]
    assert len(st["printed"]) == before  # never counted printed
    assert any(a["event"] == "job-not-printed" for a in st["firmware"]["audit"])
    # reported `failed`: the desk delivers its copy again at once, and the MFP holds it for her again
    wait_for(lambda: _held(cli("status")) == ["alice"], 30, "alice's job back from her desk")
    cli("tap", "--org", "acme", "--user", "alice")
    wait_for(lambda: len(cli("status")["printed"]) > before, 30, "alice's document after her second release")
    st = wait_for(lambda: (s := cli("status"))["firmware"]["engine"]["pending"] == [] and s, 15, "the job ended")
    assert [p["user"] for p in st["printed"][before:]] == ["alice"]  # once
    # printed: the desk drops its copy
    wait_for(lambda: cli("status")["desks"]["acme"]["held"] == [], 20, "the desk's copy dropped once printed")
