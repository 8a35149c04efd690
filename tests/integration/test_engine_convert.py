"""Ghostscript really converts a released document for an engine that does not take PDF
(hal/printer/convert.py), confined (no network, not root when run by root), and refuses garbage
with a reason instead of sending it."""

import os
import subprocess
from pathlib import Path

import pytest

from hal.printer.convert import ConversionError, confined, ghostscript_argv, rasterize
from hal.printer.engine_state import Raster
from prereq import need_binary

DATA = Path("/usr/share/cups/data")


@pytest.fixture(scope="module")
def three_pages(tmp_path_factory) -> Path:
    need_binary("gs")
    out = tmp_path_factory.mktemp("docs") / "three.pdf"
    subprocess.run(["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=pdfwrite", f"-sOutputFile={out}",
                    str(DATA / "default-testpage.pdf"), str(DATA / "standard.pdf"), str(DATA / "default.pdf")],
                   check=True, capture_output=True)
    return out


def test_pdf_becomes_pwg_raster_with_every_page(three_pages, tmp_path):
    from lab.raster_pages import pwg_pages

    out = tmp_path / "doc.pwg"
    took = rasterize(three_pages, out, Raster("image/pwg-raster", 300, False))
    data = out.read_bytes()
    assert data[:4] == b"RaS2" and pwg_pages(data) == 3 and took > 0
    assert out.stat().st_mode & 0o077 == 0  # root's file in the spool, not the converter's


def test_pdf_becomes_urf_with_every_page(three_pages, tmp_path):
    from lab.raster_pages import urf_pages

    out = tmp_path / "doc.urf"
    rasterize(three_pages, out, Raster("image/urf", 600, False))
    data = out.read_bytes()
    assert data[:8] == b"UNIRAST\0" and urf_pages(data) == 3


def test_garbage_is_refused_with_a_reason_and_leaves_no_output(tmp_path):
    need_binary("gs")
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + os.urandom(4096))
    out = tmp_path / "bad.pwg"
    with pytest.raises(ConversionError, match="could not be converted"):
        rasterize(bad, out, Raster("image/pwg-raster", 300, False))
    assert not out.exists()


def test_as_root_the_converter_has_no_network_and_is_nobody():
    argv = confined(ghostscript_argv(Raster("image/pwg-raster", 300, False)))
    if os.geteuid() != 0:
        assert argv[0] == "/usr/bin/gs"
        return
    assert argv[:3] == ["/usr/bin/unshare", "--net", "--"] and "--clear-groups" in argv
    probe = subprocess.run([*argv[:argv.index("--", 3) + 1], "sh", "-c", "id -u; cat /proc/net/dev | wc -l"],
                           capture_output=True, text=True, check=True)
    uid, devices = probe.stdout.split()
    assert uid == "65534" and int(devices) == 3  # two header lines and lo: no interface to send on


def test_a_document_whose_raster_outgrows_the_limit_is_refused(three_pages, tmp_path, monkeypatch):
    import hal.printer.convert as convert

    monkeypatch.setattr(convert, "OUTPUT_LIMIT", 32 << 10)  # a PDF bomb's raster would fill RAM-backed /run
    out = tmp_path / "big.pwg"
    with pytest.raises(ConversionError):
        rasterize(three_pages, out, Raster("image/pwg-raster", 600, False))
    assert not out.exists()


def test_ghostscripts_temporary_copy_stays_in_a_scratch_directory_on_run_and_goes(three_pages, tmp_path):
    import shutil as sh

    base = Path("/run/tenantprint-test-convert")  # on RAM, reachable by the converter's user
    sh.rmtree(base, ignore_errors=True)
    seen = []

    import hal.printer.convert as convert
    real = convert.subprocess.run

    def spy(argv, **kw):
        seen.append(kw["env"]["TMPDIR"])
        return real(argv, **kw)

    convert.subprocess.run = spy
    try:
        rasterize(three_pages, tmp_path / "doc.pwg", Raster("image/pwg-raster", 300, False), base)
    finally:
        convert.subprocess.run = real
    try:
        assert seen and seen[0].startswith(str(base)) and list(base.iterdir()) == []  # never /tmp; removed
    finally:
        sh.rmtree(base, ignore_errors=True)
