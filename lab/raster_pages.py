"""How many pages a document the lab's engine kept has: PDF, PWG raster or Apple raster (URF).

The raster counters are pure (bytes in, a count out) and decode the streams as CUPS reads them
(cups/raster-stream.c): a page is its header and then `height` rows, each row group a repeat byte
(rows = byte + 1) and a row of runs in the "modified PackBits" of both formats (0..127: the next
pixel n + 1 times; 128: the rest of the row blank; 129..255: 257 - n literal pixels). The rows are
walked, not expanded, so a page costs one step per run. URF's page-count field is not trusted:
Ghostscript writes 0 there (it does not know the count when it starts).

PDF pages come from `pdfinfo` (poppler), the one part that runs a program.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

PWG_SYNC = b"RaS2"
PWG_HEADER_BYTES = 1796
URF_MAGIC = b"UNIRAST\x00"
URF_FILE_HEADER_BYTES = 12  # magic + page count
URF_PAGE_HEADER_BYTES = 32
PDF_MAGIC = b"%PDF-"


class PageCountError(ValueError):
    """The document is not a well-formed stream of the format it claims (truncated, bad header)."""


def _skip_rows(data: bytes, i: int, height: int, row_bytes: int, unit: int, page: int) -> int:
    """Where the page whose rows start at `i` ends."""
    end = len(data)
    y = 0
    try:
        while y < height:
            y += data[i] + 1
            i += 1
            left = row_bytes
            while left > 0:
                op = data[i]
                i += 1
                if op == 128:
                    break
                if op > 128:
                    n = min((257 - op) * unit, left)
                    i += n
                    left -= n
                else:
                    i += unit
                    left -= (op + 1) * unit
    except IndexError:
        raise PageCountError(f"page {page} ends inside row {y + 1} of {height}") from None
    if i > end:
        raise PageCountError(f"page {page} ends {i - end} bytes after the document")
    return i


def pwg_pages(data: bytes) -> int:
    """Pages of a PWG raster stream ("RaS2", then per page a 1796-byte header and its rows)."""
    if not data.startswith(PWG_SYNC):
        raise PageCountError("not PWG raster (no RaS2 sync word)")
    i, pages = len(PWG_SYNC), 0
    while i < len(data):
        header = data[i:i + PWG_HEADER_BYTES]
        if len(header) < PWG_HEADER_BYTES:
            raise PageCountError(f"page {pages + 1}: header truncated ({len(header)} of {PWG_HEADER_BYTES} bytes)")
        i += PWG_HEADER_BYTES
        height, _media_type, _bits_per_color, bits_per_pixel, bytes_per_line = struct.unpack(
            ">5I", header[376:396])
        if not bits_per_pixel or not bytes_per_line:
            raise PageCountError(f"page {pages + 1}: header without pixels")
        pages += 1
        i = _skip_rows(data, i, height, bytes_per_line, (bits_per_pixel + 7) // 8, pages)
    return pages


def urf_pages(data: bytes) -> int:
    """Pages of an Apple raster (URF) stream ("UNIRAST\\0", a page count, then per page a 32-byte
    header and its rows), counted by decoding."""
    if not data.startswith(URF_MAGIC) or len(data) < URF_FILE_HEADER_BYTES:
        raise PageCountError("not URF (no UNIRAST header)")
    i, pages = URF_FILE_HEADER_BYTES, 0
    while i < len(data):
        header = data[i:i + URF_PAGE_HEADER_BYTES]
        if len(header) < URF_PAGE_HEADER_BYTES:
            raise PageCountError(f"page {pages + 1}: header truncated ({len(header)} of {URF_PAGE_HEADER_BYTES} bytes)")
        i += URF_PAGE_HEADER_BYTES
        bits_per_pixel = header[0]
        width, height = struct.unpack(">II", header[12:20])
        if not bits_per_pixel or not width:
            raise PageCountError(f"page {pages + 1}: header without pixels")
        pages += 1
        i = _skip_rows(data, i, height, (width * bits_per_pixel + 7) // 8, (bits_per_pixel + 7) // 8, pages)
    return pages


def pdf_pages(path: Path) -> int:
    """Pages of a PDF file, as `pdfinfo` reads them."""
    try:
        proc = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PageCountError(f"pdfinfo: {exc}") from None
    for line in proc.stdout.splitlines():
        if line.startswith("Pages:"):
            return int(line.split()[1])
    raise PageCountError(f"pdfinfo found no page count (exit {proc.returncode})")


def detected_format(head: bytes) -> str | None:
    """The format a document's first bytes say it is (the MIME type), whatever it was sent as;
    None when it is none of PDF, PWG raster, URF, JPEG."""
    if head.startswith(PDF_MAGIC):
        return "application/pdf"
    if head.startswith(PWG_SYNC):
        return "image/pwg-raster"
    if head.startswith(URF_MAGIC):
        return "image/urf"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def file_pages(path: Path) -> int | None:
    """Pages of the document at `path` by what its first bytes say it is; None for a format that
    has no page structure to count here (JPEG, text)."""
    with open(path, "rb") as f:
        kind = detected_format(f.read(8))
    if kind == "application/pdf":
        return pdf_pages(path)
    if kind == "image/pwg-raster":
        return pwg_pages(Path(path).read_bytes())
    if kind == "image/urf":
        return urf_pages(Path(path).read_bytes())
    return None
