"""Converting a released document into a format the engine takes, on the device.

`plan(document_format, engine)` decides (pure): send as it is when the engine lists the format;
rasterize PDF and PostScript to the engine's PWG raster or URF otherwise; refuse what cannot be
converted (the job is then reported not printed, with the reason). `rasterize(...)` runs Ghostscript.

Ghostscript parses documents that came from an organization's desk: a large attack surface run for
a root daemon. So it runs with -dSAFER, as an unprivileged user (`nobody`), in a network namespace of
its own (no network at all), with its CPU time, memory and output size bounded, reading the document
on stdin and writing the raster on stdout (the files stay root's, in the engine spool).
"""

from __future__ import annotations

import functools
import os
import pwd
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hal.printer.engine_state import EngineState, Raster

GHOSTSCRIPT = "/usr/bin/gs"
CONVERTIBLE = frozenset({"application/pdf", "application/postscript"})
CPU_LIMIT_S = 300            # per document
MEMORY_LIMIT = 1 << 30       # address space of the converter
OUTPUT_LIMIT = 256 << 20     # bytes of raster at most (a 300 dpi grey A4 page: ~9 MB raw, 0.05-1 MB packed),
                             # and never more than half the spool's free space: /run is RAM
WALL_LIMIT_S = 600


MAGIC = {"image/pwg-raster": b"RaS2", "image/urf": b"UNIRAST\0"}


class ConversionError(Exception):
    """The document cannot be made into something this engine prints (the reason is for the person)."""


@dataclass(frozen=True)
class Plan:
    send_format: str
    raster: Raster | None = None     # None: send the document as it is


def plan(document_format: str, engine: EngineState) -> Plan:
    """How to print a document of `document_format` on `engine` (ConversionError when it cannot be)."""
    fmt = (document_format or "application/octet-stream").split(";")[0].strip().lower()
    if not engine.formats or fmt in engine.formats:
        return Plan(fmt)  # an engine that lists nothing is sent the document as it is
    if fmt == "application/octet-stream" and "application/octet-stream" in engine.formats:
        return Plan(fmt)
    if fmt in CONVERTIBLE and engine.raster is not None:
        return Plan(engine.raster.format, engine.raster)
    if engine.raster is None:
        raise ConversionError(f"the printer takes none of the formats this device makes "
                              f"({', '.join(engine.formats[:6]) or 'none listed'})")
    raise ConversionError(f"{fmt} cannot be converted for this printer")


def ghostscript_argv(raster: Raster) -> list[str]:
    device = "pwgraster" if raster.format == "image/pwg-raster" else "urf"
    # -sstdout=%stderr: Ghostscript's own messages never mix into the raster on stdout
    return [GHOSTSCRIPT, "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dNOINTERPOLATE", "-sstdout=%stderr",
            f"-sDEVICE={device}",
            f"-r{raster.resolution}", "-dcupsBitsPerColor=8",
            f"-dcupsColorSpace={19 if raster.color else 18}",  # CUPS_CSPACE_SRGB / _SW
            "-sOutputFile=-", "-"]


def confined(argv: list[str]) -> list[str]:
    """`argv` run without network and as `nobody` when we are root (util-linux's unshare and setpriv:
    both in every Debian); as it is otherwise (a test run by a user)."""
    if os.geteuid() != 0:
        return argv
    nobody = pwd.getpwnam("nobody")
    return ["/usr/bin/unshare", "--net", "--", "/usr/bin/setpriv", f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}", "--clear-groups", "--inh-caps=-all", "--", *argv]


SCRATCH = Path("/run/tenantprint/convert")  # root's 0711; one 0700 directory of nobody's per conversion


def rasterize(document: Path, output: Path, raster: Raster, scratch_base: Path | None = None) -> float:
    """Write `document` (PDF or PostScript) as `raster` to `output`; the seconds it took.
    ConversionError when Ghostscript fails or exceeds its limits (`output` is then removed).
    `scratch_base`: where the converter's temporary directory goes (on RAM; default SCRATCH when
    run as root, else beside `output`)."""
    start = time.monotonic()
    limit = max(4096, min(OUTPUT_LIMIT, shutil.disk_usage(output.parent).free // 2))
    # Ghostscript copies a PDF read from stdin to a temporary file: its own directory beside the
    # output (on /run, RAM), never /tmp (on a device, the SD card), removed whatever happens.
    base = scratch_base or (SCRATCH if os.geteuid() == 0 else output.parent)
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(base, 0o711)  # nobody reaches its own directory, lists nothing
    scratch = Path(tempfile.mkdtemp(prefix="gs-", dir=base))
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(scratch, nobody.pw_uid, nobody.pw_gid)
        with open(document, "rb") as src, open(fd, "wb") as out:
            proc = subprocess.run(confined(ghostscript_argv(raster)), stdin=src, stdout=out, stderr=subprocess.PIPE,
                                  env={"PATH": "/usr/bin:/bin", "LANG": "C", "TMPDIR": str(scratch)}, cwd="/",
                                  preexec_fn=functools.partial(_bound, limit), timeout=WALL_LIMIT_S, close_fds=True)
    except subprocess.TimeoutExpired:
        output.unlink(missing_ok=True)
        raise ConversionError(f"conversion took longer than {WALL_LIMIT_S} s") from None
    except OSError as exc:
        output.unlink(missing_ok=True)
        raise ConversionError(f"converter could not run: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with open(output, "rb") as made:
        magic = made.read(8)
    if proc.returncode != 0 or not magic.startswith(MAGIC[raster.format]):
        output.unlink(missing_ok=True)
        said = [line for line in proc.stderr.decode("utf-8", "replace").splitlines()
                if line.strip() and not line.startswith("INFO:")]
        last = said[-1:] or [f"exit {proc.returncode}"]
        raise ConversionError(f"the document could not be converted ({last[0][:80]})")
    return time.monotonic() - start


def _bound(output_limit: int) -> None:
    """In the converter's child before exec (only async-signal-safe work: rlimits)."""
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_limit, output_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
