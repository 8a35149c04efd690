"""What the print engine says about itself: its state, its problems, the formats it takes.

Pure: `describe(attributes)` turns a Get-Printer-Attributes answer (hal.printer.ipp's decoded
dict) into an `EngineState`; `condition(reasons)` picks the one problem a person at the printer must
hear about (paper out, jam, door open, ...), most urgent first. Nothing here talks to the network.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# What the engine is asked for, at start, while idle and while it prints.
ATTRIBUTES = ["printer-state", "printer-state-reasons", "printer-is-accepting-jobs",
              "document-format-supported", "pwg-raster-document-resolution-supported",
              "pwg-raster-document-type-supported", "urf-supported", "print-color-mode-default",
              "marker-names", "marker-levels", "marker-types", "printer-make-and-model"]

STATES = {3: "idle", 4: "processing", 5: "stopped"}

# printer-state-reasons (RFC 8011 §5.4.12, PWG 5100.9) a person at the printer must hear about,
# most urgent first; each maps to a panel key (firmware/panel.py). A reason may carry a -error,
# -warning or -report suffix: all count (ippeveprinter says `media-empty-report` while idle, the same
# empty tray `-warning` once a job waits for it).
CONDITIONS: tuple[tuple[str, str], ...] = (
    ("offline", "printer-offline"),
    ("shutdown", "printer-offline"),
    ("media-jam", "printer-jam"),
    ("door-open", "printer-door-open"),
    ("cover-open", "printer-door-open"),
    ("interlock-open", "printer-door-open"),
    ("input-tray-missing", "printer-tray-missing"),
    ("media-empty", "printer-paper-out"),
    ("media-needed", "printer-paper-out"),
    ("toner-empty", "printer-toner-empty"),
    ("marker-supply-empty", "printer-toner-empty"),
    ("output-area-full", "printer-output-full"),
    ("paused", "printer-paused"),
    ("toner-low", "printer-toner-low"),
    ("marker-supply-low", "printer-toner-low"),
    ("media-low", "printer-paper-low"),
)
# Conditions that stop printing (the others are warnings shown beside the session's line).
BLOCKING = frozenset({"printer-offline", "printer-jam", "printer-door-open", "printer-tray-missing",
                      "printer-paper-out", "printer-toner-empty", "printer-output-full", "printer-paused",
                      "printer-not-connected"})


@dataclass(frozen=True)
class Raster:
    """How to rasterize for an engine that does not take PDF: the format and its parameters."""
    format: str          # image/pwg-raster | image/urf
    resolution: int      # dots per inch, both directions
    color: bool          # sRGB 8-bit when True, grey 8-bit otherwise


@dataclass(frozen=True)
class EngineState:
    state: str = "unknown"              # idle | processing | stopped | unknown
    reasons: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    raster: Raster | None = None        # None: the engine takes no raster format we make
    markers: tuple[dict, ...] = field(default=())
    model: str = ""

    @property
    def condition(self) -> str:
        return condition(self.reasons)

    def view(self) -> dict:
        return {"state": self.state, "reasons": list(self.reasons), "condition": self.condition,
                "formats": list(self.formats), "markers": list(self.markers), "model": self.model,
                "raster": None if self.raster is None else
                {"format": self.raster.format, "resolution": self.raster.resolution, "color": self.raster.color}}


def condition(reasons) -> str:
    """The panel key of the most urgent problem among `reasons`, or "" when there is none."""
    words = set()
    for reason in reasons:
        reason = str(reason)
        for suffix in ("-error", "-warning", "-report"):
            if reason.endswith(suffix):
                reason = reason[: -len(suffix)]
        words.add(reason)
    for word, key in CONDITIONS:
        if word in words:
            return key
    return ""


def describe(attrs: dict[str, list]) -> EngineState:
    """The engine's state from its printer attributes (values as hal.printer.ipp decodes them)."""
    state = attrs.get("printer-state", [0])[0] if attrs.get("printer-state") else 0
    reasons = tuple(str(r) for r in attrs.get("printer-state-reasons", []) if str(r) != "none")
    formats = tuple(str(f) for f in attrs.get("document-format-supported", []))
    names, levels = attrs.get("marker-names", []), attrs.get("marker-levels", [])
    kinds = attrs.get("marker-types", [])
    markers = tuple({"name": str(n), "level": levels[i] if i < len(levels) else None,
                     "type": str(kinds[i]) if i < len(kinds) else ""} for i, n in enumerate(names))
    color = str((attrs.get("print-color-mode-default") or ["monochrome"])[0]) == "color"
    model = attrs.get("printer-make-and-model") or [""]
    return EngineState(state=STATES.get(state if isinstance(state, int) else 0, "unknown"), reasons=reasons,
                       formats=formats, raster=choose_raster(attrs, formats, color), markers=markers,
                       model=str(model[0])[:80])


def choose_raster(attrs: dict[str, list], formats: tuple[str, ...], color_default: bool) -> Raster | None:
    """PWG raster when the engine takes it, else Apple raster (URF); the engine's resolution nearest
    300 dpi (enough for office documents, a quarter of 600's pixels), colour only when it prints
    colour by default and says it takes sRGB."""
    if "image/pwg-raster" in formats:
        resolutions = [r for r in (_resolution(v) for v in attrs.get("pwg-raster-document-resolution-supported", []))
                       if r]
        types = {str(t) for t in attrs.get("pwg-raster-document-type-supported", [])}
        return Raster("image/pwg-raster", _nearest(resolutions), color_default and "srgb_8" in types)
    if "image/urf" in formats:
        urf = [str(v) for v in attrs.get("urf-supported", [])]
        resolutions = []
        for value in urf:
            if value.startswith("RS"):
                resolutions += [int(x) for x in value[2:].split("-") if x.isdigit()]
        return Raster("image/urf", _nearest(resolutions), color_default and "SRGB24" in urf)
    return None


def _nearest(resolutions: list[int], want: int = 300) -> int:
    return min(resolutions, key=lambda r: (abs(r - want), -r)) if resolutions else want


def _resolution(value) -> int | None:
    """A resolution value (RFC 8010 §3.9: x, y as signed 32-bit, units 3 = dpi, 4 = dpcm)."""
    if isinstance(value, (bytes, bytearray)) and len(value) == 9:
        x, _y, units = struct.unpack(">iib", bytes(value))
        if units == 3 and 0 < x <= 4800:
            return x
        if units == 4 and 0 < x <= 2000:
            return round(x * 2.54)
    return None
