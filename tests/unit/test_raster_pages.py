"""lab/raster_pages: page counts of real PWG raster and URF streams, made by Ghostscript from a
3-page PDF in the depths and colour spaces a converter would use."""

from __future__ import annotations

import subprocess

import pytest

from lab.raster_pages import PageCountError, detected_format, file_pages, pdf_pages, pwg_pages, urf_pages
from prereq import need_binary

PAGES = 3
# Page 2 has a grey gradient so its rows are not all blank runs: literal and repeat runs both occur.
POSTSCRIPT = b"""%!PS
/Helvetica findfont 24 scalefont setfont
1 1 3 { /n exch def
  n 2 eq { 0 1 99 { /k exch def k 100 div setgray 72 k 2 mul add 300 4 200 rectfill } for 0 setgray } if
  72 700 moveto (Page ) show n 3 string cvs show showpage } for
"""


def _gs(args: list[str], src, out) -> bytes:
    subprocess.run(["gs", "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", *args, f"-sOutputFile={out}", str(src)],
                   check=True, capture_output=True, timeout=60)
    return out.read_bytes()


@pytest.fixture(scope="module")
def pdf(tmp_path_factory):
    need_binary("gs", "pdfinfo")
    d = tmp_path_factory.mktemp("raster")
    (d / "three.ps").write_bytes(POSTSCRIPT)
    _gs(["-sDEVICE=pdfwrite"], d / "three.ps", d / "three.pdf")
    return d / "three.pdf"


MODES = {"mono": [], "gray8": ["-dcupsColorSpace=18", "-dcupsBitsPerColor=8"],
         "rgb8": ["-dcupsColorSpace=19", "-dcupsBitsPerColor=8"]}


@pytest.mark.parametrize("mode", MODES)
def test_pwg_raster_pages(pdf, mode):
    data = _gs(["-sDEVICE=pwgraster", "-r75", *MODES[mode]], pdf, pdf.with_suffix(f".{mode}.pwg"))
    assert pwg_pages(data) == PAGES
    assert file_pages(pdf.with_suffix(f".{mode}.pwg")) == PAGES


@pytest.mark.parametrize("mode", MODES)
def test_urf_pages_counted_by_decoding(pdf, mode):
    data = _gs(["-sDEVICE=urf", "-r75", *MODES[mode]], pdf, pdf.with_suffix(f".{mode}.urf"))
    assert data[8:12] == b"\0\0\0\0"  # Ghostscript leaves the page-count field empty: decoding is the count
    assert urf_pages(data) == PAGES
    assert file_pages(pdf.with_suffix(f".{mode}.urf")) == PAGES


def test_pdf_pages(pdf):
    assert pdf_pages(pdf) == PAGES
    assert file_pages(pdf) == PAGES


def test_one_page_is_one(pdf):
    data = _gs(["-sDEVICE=pwgraster", "-r75", "-dFirstPage=2", "-dLastPage=2"], pdf, pdf.with_suffix(".p2.pwg"))
    assert pwg_pages(data) == 1


def test_truncated_streams_are_errors_not_counts(pdf):
    pwg = _gs(["-sDEVICE=pwgraster", "-r75", *MODES["gray8"]], pdf, pdf.with_suffix(".t.pwg"))
    urf = _gs(["-sDEVICE=urf", "-r75", *MODES["gray8"]], pdf, pdf.with_suffix(".t.urf"))
    for count, data in ((pwg_pages, pwg), (urf_pages, urf)):
        with pytest.raises(PageCountError):
            count(data[:-40])  # inside the last page's rows
        with pytest.raises(PageCountError):
            count(data[:len(data) // 2])
    with pytest.raises(PageCountError, match="header truncated"):
        pwg_pages(pwg + b"\0" * 100)


def test_wrong_magic_is_an_error():
    with pytest.raises(PageCountError):
        pwg_pages(b"UNIRAST\0" + b"\0" * 40)
    with pytest.raises(PageCountError):
        urf_pages(b"RaS2" + b"\0" * 40)


def test_formats_without_pages_are_none(tmp_path):
    (tmp_path / "note.txt").write_text("hello\n")
    assert file_pages(tmp_path / "note.txt") is None


def test_detected_format_by_content(pdf):
    assert detected_format(pdf.read_bytes()[:8]) == "application/pdf"
    assert detected_format(b"RaS2PwgRaster") == "image/pwg-raster"
    assert detected_format(b"UNIRAST\0\0\0\0\0") == "image/urf"
    assert detected_format(b"hello") is None
