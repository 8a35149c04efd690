"""The MFP's print engine in the lab: `ippeveprinter` on the office host (the USB printer's stand-in).

The session cupsd's release queue prints to it at 127.0.0.1:8631 of the office host. ippeveprinter
has no option to bind one address (it listens on every address of the host): the device firewall,
which the firmware installs at start, is what keeps the office LAN and the tunnels away from it, as
it would any other listening socket on a real device (tests/attacks/test_exposure.py).
ippeveprinter needs a D-Bus system bus even with DNS-SD off, so a private `dbus-daemon` runs on the
office host too (the host's own /run holds its socket). Every document the engine prints is kept
(`-k`) and recorded by a small print command with its user, title, size and engine job id: that
record is the lab's `printed` list.

Variants (`lab up --engine`, ENGINE_FORMATS): the formats the engine takes, as a printer that
needs the Pi to convert would (`pwg-only`, `urf-only`). The engine's state is the lab's to set:
ippeveprinter's own media web form (on by default in 2.4.2, `GET /media?levelN=...`) empties or
fills its trays; with a tray empty it reports `media-empty` and holds the job it is processing
(`media-needed`) until paper is back (`set_media_level`).

Each start of ippeveprinter is an *instance* with its own spool directory: job ids start again at
1 after a restart, and a kept file or a record must never be mistaken for a later job's.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path

from lab.host import LabError

HOST = "office"
PORT = 8631
ENGINE_FORMATS: dict[str, tuple[str, ...]] = {
    "pdf": ("application/pdf", "image/pwg-raster", "image/jpeg", "text/plain"),
    "pwg-only": ("image/pwg-raster",),
    "urf-only": ("image/urf",),
}
TRAY_SHEETS = 250  # a full tray, as ippeveprinter's media form offers it
JOB_STATES = {3: "pending", 4: "pending-held", 5: "processing", 6: "processing-stopped", 7: "canceled",
              8: "aborted", 9: "completed"}
PRINTER_STATES = {3: "idle", 4: "processing", 5: "stopped"}
# ippeveprinter keeps a job's format as document-format-supplied (and -detected when it sniffed it)
_JOB_ATTRIBUTES = ["job-id", "job-name", "job-originating-user-name", "job-state", "job-state-reasons",
                   "document-format", "document-format-supplied", "document-format-detected"]
RECORDER = r"""#!/bin/sh
# ippeveprinter's print command: record what reached the engine (the file itself is kept by -k).
# Its exit (0: nothing after the record can fail) is what completes the job at the engine.
# Names come from desks. ippeveprinter hands them over escaped (\\ \" \[, ippAttributeString):
# JSON takes the first two as they are; \[ becomes [, control characters spaces.
esc() { printf '%s' "$1" | tr '\000-\037' ' ' | sed 's/\\\[/[/g'; }
# `lab fault engine-jam-next`: the next job jams (exit 1: ippeveprinter aborts it, nothing recorded)
if [ -e "$(dirname "$0")/jam-next" ]; then
  rm -f "$(dirname "$0")/jam-next"
  echo "ERROR: paper jam (lab fault)" >&2
  exit 1
fi
size=$(wc -c < "$1")
printf '{"file": "%s", "bytes": %s, "user": "%s", "title": "%s", "format": "%s", "job_id": %s, "instance": "%s", "at": %s}\n' \
  "$1" "$size" "$(esc "$IPP_JOB_ORIGINATING_USER_NAME")" "$(esc "$IPP_JOB_NAME")" "$CONTENT_TYPE" "${IPP_JOB_ID:-null}" \
  "$TP_ENGINE_INSTANCE" "$(date +%s.%N)" >> "$(dirname "$0")/printed.jsonl"
"""


def jam_next(lab) -> None:
    """The next job the engine prints jams: aborted at the engine, never recorded as printed."""
    (_dir(lab) / "jam-next").write_text("")


def engine_uri(lab) -> str:
    return f"ipp://127.0.0.1:{PORT}/ipp/print"


def _dir(lab) -> Path:
    d = lab.layout.data_dir("engine")
    (d / "spool").mkdir(parents=True, exist_ok=True)
    return d


def _instance(lab) -> dict:
    """The running (or last) ippeveprinter's instance: {"instance", "variant"} ({} before any)."""
    try:
        return json.loads((lab.layout.data_dir("engine") / "instance.json").read_text())
    except (OSError, ValueError):
        return {}


def on_office(lab, fn):
    """`fn()` on a thread inside the office host's network (where the engine listens)."""
    from hal.sandbox.inside import call_in_netns

    return call_in_netns(f"/run/netns/{lab.host(HOST).ns}", fn)


def _printer_attributes(lab, requested: list[str]) -> dict[str, list]:
    from hal.printer.ipp import get_printer_attributes

    return on_office(lab, lambda: get_printer_attributes(engine_uri(lab), requested, read_timeout=5.0))


def engine_jobs(lab) -> list[dict]:
    """The engine's own job list (Get-Jobs, which-jobs=all: its history keeps a finished job 60 s):
    [{id, name, user, state, reasons, format}], oldest first. IppError/OSError when it does not answer."""
    from hal.printer.ipp import call, encode_get_jobs, first, job_groups

    body = encode_get_jobs(engine_uri(lab), "lab", _JOB_ATTRIBUTES)
    answer = on_office(lab, lambda: call(engine_uri(lab), body, read_timeout=5.0))
    jobs = [{"id": first(a, "job-id"), "name": first(a, "job-name"), "user": first(a, "job-originating-user-name"),
             "state": JOB_STATES.get(first(a, "job-state"), first(a, "job-state")),
             "reasons": a.get("job-state-reasons", []),
             "format": first(a, "document-format-detected") or first(a, "document-format-supplied")
             or first(a, "document-format")}
            for a in job_groups(answer)]
    return sorted(jobs, key=lambda j: j["id"] or 0)


def engine_state(lab) -> dict:
    """What the engine says of itself, for `lab status` -> `engine`: {uri, variant, running, state
    (idle|processing|stopped, or "off" when it does not answer), reasons (printer-state-reasons as the
    engine lists them: ["none"] when all is well), formats (document-format-supported), jobs
    (`engine_jobs`), printed (how many documents it printed)}. Never raises: a switched-off engine
    or a lab that is down is state "off" with empty lists."""
    from hal.printer.ipp import IppError, first

    out = {"uri": engine_uri(lab), "variant": _instance(lab).get("variant"),
           "running": _running(lab, EngineService.name), "state": "off", "reasons": [], "formats": [],
           "jobs": [], "printed": len(_records(lab))}
    if not out["running"]:
        return out
    try:
        attrs = _printer_attributes(lab, ["printer-state", "printer-state-reasons", "document-format-supported"])
        out["jobs"] = engine_jobs(lab)
    except (IppError, OSError, LabError) as exc:
        out["error"] = str(exc)
        return out
    out["state"] = PRINTER_STATES.get(first(attrs, "printer-state"), first(attrs, "printer-state"))
    out["reasons"] = attrs.get("printer-state-reasons", [])
    out["formats"] = attrs.get("document-format-supported", [])
    return out


def reason_keywords(reasons: list[str]) -> set[str]:
    """printer-state-reasons without their severity suffix: ippeveprinter says `media-empty-report`
    when idle, `-warning` while processing, `-error` when stopped (RFC 8011 5.4.12)."""
    out = set()
    for reason in reasons:
        for suffix in ("-report", "-warning", "-error"):
            if reason.endswith(suffix):
                reason = reason[:-len(suffix)]
                break
        out.add(reason)
    return out


def set_media_level(lab, sheets: int) -> list[str]:
    """Fill (sheets > 0) or empty (0) every tray of the engine through ippeveprinter's media form,
    then read back and return its printer-state-reasons; LabError when the engine is off or did not
    take it (media-empty present with paper, or absent without). A restarted engine has paper again."""
    from hal.printer.ipp import IppError, first

    try:
        attrs = _printer_attributes(lab, ["media-source-supported", "media-default"])
    except (IppError, OSError) as exc:
        raise LabError(f"engine: not answering, no paper to take or give ({exc})") from None
    size = first(attrs, "media-default") or "iso_a4_210x297mm"
    query = []
    for i, source in enumerate(attrs.get("media-source-supported", [])):
        if source in ("auto", "manual") or "-man" in source:  # trays the form leaves out (show_media)
            continue
        query += [f"size{i}={size}", f"type{i}=", f"level{i}={sheets}"]
    if not query:
        raise LabError("engine: no tray to fill or empty (media-source-supported has none)")

    def get() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
        try:
            conn.request("GET", "/media?" + "&".join(query))
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    try:
        status = on_office(lab, get)
    except OSError as exc:
        raise LabError(f"engine: media form not reached ({exc})") from None
    if status != 200:
        raise LabError(f"engine: media form answered HTTP {status}")
    try:
        reasons = _printer_attributes(lab, ["printer-state-reasons"]).get("printer-state-reasons", [])
    except (IppError, OSError) as exc:
        raise LabError(f"engine: media set, but its state not read back ({exc})") from None
    if ("media-empty" in reason_keywords(reasons)) != (sheets == 0):
        raise LabError(f"engine: trays set to {sheets} sheets but the engine reports {reasons}")
    return reasons


def _page_cache(lab) -> tuple[Path, dict]:
    path = lab.layout.data_dir("engine") / "pages.json"
    try:
        return path, json.loads(path.read_text())
    except (OSError, ValueError):
        return path, {}


def _content(file: str, cache: dict) -> dict:
    """{"pages", "detected_format"} of a kept file, counted once (cached by path: a path is never
    reused, each engine instance spools into its own directory)."""
    from lab.raster_pages import PageCountError, detected_format, file_pages

    if file not in cache:
        try:
            with open(file, "rb") as f:
                kind = detected_format(f.read(8))
            cache[file] = {"pages": file_pages(Path(file)), "detected_format": kind}
        except (OSError, PageCountError):
            return {"pages": None, "detected_format": None}  # not cached: counted again next time
    return cache[file]


def _records(lab) -> list[dict]:
    path = lab.layout.data_dir("engine") / "printed.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def printed_documents(lab, engine_jobs: list[dict] | None = None) -> list[dict]:
    """Every document that reached the engine, oldest first: {file, bytes, user, title, format,
    job_id, instance, at, pages, detected_format, job_state}. `format` is what the job was sent as,
    `detected_format` what the kept file's first bytes say it is; `pages` is counted from the kept
    file (None for a format without pages here, or one that does not parse); `job_state` is the engine's state of that job
    while the engine still lists it (`engine_jobs`, asked of the engine when not given), else
    "completed": the record is written by the print command, whose exit completes the job."""
    out = _records(lab)
    if not out:
        return out
    if engine_jobs is None:
        engine_jobs = _jobs_if_answering(lab) or []
    current = _instance(lab).get("instance")
    states = {j["id"]: j["state"] for j in engine_jobs}
    cache_path, cache = _page_cache(lab)
    before = dict(cache)
    for doc in out:
        doc.update(_content(doc.get("file", ""), cache))
        live = doc.get("instance") == current and doc.get("job_id") in states
        doc["job_state"] = states[doc["job_id"]] if live else "completed"
    if cache != before:  # several `lab status` at once: each writes whole, the last one stays
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_path)
    return out


def _jobs_if_answering(lab) -> list[dict] | None:
    from hal.printer.ipp import IppError

    if not _running(lab, EngineService.name):
        return None
    try:
        return engine_jobs(lab)
    except (IppError, OSError, LabError):
        return None


def _running(lab, key: str) -> bool:
    rec = lab.procs.get(key)
    return bool(rec and rec.alive())


class EngineService:
    """ippeveprinter (and its D-Bus) on the office host, taking the formats of `variant`
    (ENGINE_FORMATS; None: the lab's `--engine` option)."""

    name = "engine"

    def __init__(self, variant: str | None = None):
        if variant is not None and variant not in ENGINE_FORMATS:
            raise ValueError(f"engine variant must be one of {', '.join(ENGINE_FORMATS)}, not {variant!r}")
        self.variant = variant

    def _variant(self, lab) -> str:
        return self.variant or getattr(lab.options, "engine", "pdf")

    def _answers(self, lab) -> bool:
        from hal.printer.ipp import IppError, get_printer_attributes

        try:
            on_office(lab, lambda: get_printer_attributes(engine_uri(lab), ["printer-state"], connect_timeout=0.5,
                                                           read_timeout=2.0))
        except (IppError, OSError):
            return False
        return True

    def start(self, lab) -> None:
        """Start the engine (idempotent). A running engine of another variant is restarted as this one."""
        d = _dir(lab)
        host = lab.host(HOST)
        if not _running(lab, "engine-dbus"):
            host.run(["mkdir", "-p", "/run/dbus"])
            # a bus stopped earlier leaves its socket file: waiting for it would not wait at all
            host.path("/run/dbus/system_bus_socket").unlink(missing_ok=True)
            lab.spawn("engine-dbus", HOST, ["dbus-daemon", "--system", "--nofork", "--nopidfile"])
            deadline = time.monotonic() + 10
            while not host.path("/run/dbus/system_bus_socket").exists():
                if time.monotonic() > deadline:
                    raise LabError("engine: the office D-Bus did not come up")
                time.sleep(0.02)
        variant = self._variant(lab)
        if _running(lab, self.name):
            if _instance(lab).get("variant") == variant:
                return
            lab.procs.stop(self.name)
        recorder = d / "record-job"
        recorder.write_text(RECORDER)
        recorder.chmod(0o755)
        instance = str(time.time_ns())
        spool = d / "spool" / instance
        spool.mkdir(parents=True)
        (d / "instance.json").write_text(json.dumps({"instance": instance, "variant": variant}))
        lab.spawn(self.name, HOST, ["ippeveprinter", "-r", "off", "-k", "-c", str(recorder),
                                    "-d", str(spool), "-p", str(PORT), "-f", ",".join(ENGINE_FORMATS[variant]),
                                    "-M", "Tenantprint", "-m", "Lab Engine", "tenantprint-engine"],
                  env={"TP_ENGINE_INSTANCE": instance})
        deadline = time.monotonic() + 15
        while not self._answers(lab):
            if not _running(lab, self.name) or time.monotonic() > deadline:
                raise LabError(f"engine: ippeveprinter not answering (log {lab.layout.logs_dir / 'engine.log'})")
            time.sleep(0.05)

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)
        lab.procs.stop("engine-dbus")

    def switch_off(self, lab) -> None:
        """The printer switched off: ippeveprinter stops (its D-Bus stays for the restart)."""
        lab.procs.stop(self.name)

    def status(self, lab) -> dict:
        """`engine_state`: what `lab status` shows under `engine` (and services.engine)."""
        return engine_state(lab)


def serving_engine(lab, spool_dir: Path, poll_s: float = 0.01, report=None, retry_s: float = 1.0):
    """A `PrintEngine` (the firmware's) for the lab's engine, served on a thread inside the office
    host's network (where the engine listens): (engine, stop event). For benchmarks and tests that
    release from their own process as the firmware does; `report(outcome)` hears how jobs end."""
    import threading

    from hal.printer.engine import PrintEngine

    engine = PrintEngine(engine_uri(lab), spool_dir, poll_s=poll_s, retry_s=retry_s)
    stop = threading.Event()
    lab.host(HOST).thread(lambda: engine.serve(stop, report or (lambda outcome: None)), name="lab-engine")
    return engine, stop
