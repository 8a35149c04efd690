"""What the engine says about itself (hal/printer/engine_state.py) and how a document is planned
for it (hal/printer/convert.py `plan`): pure, from attribute dicts as hal.printer.ipp decodes them."""

import struct

import pytest

from hal.printer.convert import ConversionError, plan
from hal.printer.engine_finder import check_uri
from hal.printer.engine_state import Raster, condition, describe


def _dpi(x: int) -> bytes:
    return struct.pack(">iib", x, x, 3)


PWG_ONLY = {"printer-state": [3], "printer-state-reasons": ["none"],
            "document-format-supported": ["application/octet-stream", "image/pwg-raster"],
            "pwg-raster-document-resolution-supported": [_dpi(300), _dpi(600)],
            "pwg-raster-document-type-supported": ["black_1", "sgray_8"]}
URF_ONLY = {"printer-state": [4], "printer-state-reasons": ["media-empty-warning", "media-needed-warning"],
            "document-format-supported": ["application/octet-stream", "image/urf"],
            "urf-supported": ["CP1", "IS1-4-5-19", "MT1-2-3-4-5-6", "RS600", "V1.4", "W8"]}


def test_an_engine_that_takes_pwg_raster_only_gets_grey_pwg_at_300_dpi():
    st = describe(PWG_ONLY)
    assert (st.state, st.reasons, st.condition) == ("idle", (), "")
    assert st.raster == Raster("image/pwg-raster", 300, False)
    assert plan("application/pdf", st).raster == st.raster
    assert plan("image/pwg-raster", st).raster is None  # already what it takes: sent as it is


def test_an_urf_engine_gets_urf_at_its_own_resolution_and_paper_out_is_said():
    st = describe(URF_ONLY)
    assert st.raster == Raster("image/urf", 600, False)
    assert st.state == "processing" and st.condition == "printer-paper-out"


def test_colour_only_when_the_engine_prints_colour_and_takes_srgb():
    attrs = dict(PWG_ONLY, **{"pwg-raster-document-type-supported": ["sgray_8", "srgb_8"],
                              "print-color-mode-default": ["color"]})
    assert describe(attrs).raster.color is True
    assert describe(dict(attrs, **{"print-color-mode-default": ["monochrome"]})).raster.color is False


def test_pdf_passes_through_an_engine_that_takes_it():
    st = describe(dict(PWG_ONLY, **{"document-format-supported": ["application/pdf", "image/pwg-raster"]}))
    assert plan("application/pdf", st).raster is None and plan("application/pdf", st).send_format == "application/pdf"


def test_what_cannot_be_converted_is_refused_with_a_reason():
    with pytest.raises(ConversionError, match="cannot be converted"):
        plan("image/jpeg", describe(PWG_ONLY))
    with pytest.raises(ConversionError, match="takes none of the formats"):
        plan("application/pdf", describe({"document-format-supported": ["application/vnd.hp-pcl"]}))


@pytest.mark.parametrize("reasons, key", [
    (["none"], ""), (["media-empty-report"], "printer-paper-out"), (["toner-low-report"], "printer-toner-low"),
    (["toner-low-warning", "media-jam-error"], "printer-jam"), (["door-open-error", "media-empty-error"],
                                                               "printer-door-open"),
    (["offline-report"], "printer-offline"), (["something-new"], ""),
])
def test_the_most_urgent_condition_is_said(reasons, key):
    assert condition(reasons) == key


def test_a_malformed_resolution_is_ignored_not_fatal():
    st = describe(dict(PWG_ONLY, **{"pwg-raster-document-resolution-supported": [b"\x00", _dpi(-5)]}))
    assert st.raster.resolution == 300


@pytest.mark.parametrize("uri", ["auto", "ipp://127.0.0.1:60000/ipp/print", "ipp://printer.lan/ipp/print"])
def test_engine_uris_that_are_engines(uri):
    assert check_uri(uri) == uri


@pytest.mark.parametrize("uri, says", [("usb://auto", "ipp-usb"), ("usb://Brother/HL-L2350DW", "CUPS backends"),
                                       ("ipps://printer.lan/ipp/print", "not supported"),
                                       ("socket://10.0.0.5", "not a print engine"), ("", "not a print engine")])
def test_other_uris_are_refused_naming_the_alternatives(uri, says):
    with pytest.raises(ValueError, match=says):
        check_uri(uri)


def test_a_backend_uri_is_an_engine_only_with_a_driver_and_the_driver_is_a_model_name():
    from firmware import config
    from hal.printer.driver_engine import check_driver

    cfg = config.from_dict({"printer": {"engine_uri": "usb://Brother/HL-L2300D?serial=1", "driver":
                                        "drv:///brlaser.drv/br2300.ppd"}})
    assert cfg.printer.engine_uri.startswith("usb://")
    with pytest.raises(config.ConfigError, match="CUPS device URI"):
        config.from_dict({"printer": {"engine_uri": "auto", "driver": "drv:///brlaser.drv/br2300.ppd"}})
    with pytest.raises(config.ConfigError, match="set printer.driver too"):
        config.from_dict({"printer": {"engine_uri": "usb://Brother/HL-L2300D"}})
    for bad in ("../../etc/shadow", "drv:///x.drv/a b.ppd", "/usr/share/ppd/../../../etc/passwd", "/tmp/evil.ppd"):
        with pytest.raises(ValueError):
            check_driver(bad)
