"""lab/options: `lab up` flags as remembered by the lab."""

from __future__ import annotations

import pytest

from lab.options import LabOptions


def test_ldap_orgs_are_normalised_and_survive_save_and_load(tmp_path):
    opts = LabOptions(ldap=["globex", "globex"])
    assert opts.ldap == ("globex",)
    opts.save(tmp_path)
    assert LabOptions.load(tmp_path) == opts  # so `lab up` with the same flags is the same lab


def test_ldap_only_for_the_labs_contracted_orgs():
    with pytest.raises(ValueError, match="initech"):
        LabOptions(ldap=("initech",))


def test_engine_variant_defaults_to_pdf_and_survives_save_and_load(tmp_path):
    assert LabOptions().engine == "pdf"
    opts = LabOptions(engine="urf-only")
    opts.save(tmp_path)
    assert LabOptions.load(tmp_path) == opts
    assert LabOptions.load(tmp_path) != LabOptions()  # so `lab up --engine pdf` on it is refused


def test_unknown_engine_variant_refused():
    with pytest.raises(ValueError, match="pwg-only"):
        LabOptions(engine="postscript")


def test_options_saved_before_the_engine_option_load_as_pdf(tmp_path):
    (tmp_path / "options.json").write_text('{"wan_rtt_ms": 0.0, "tunnel_backend": "auto", "combined": false, "ldap": []}')
    assert LabOptions.load(tmp_path).engine == "pdf"


def test_every_engine_variant_has_a_format_list():
    from lab.options import ENGINES
    from lab.services.engine import ENGINE_FORMATS

    assert set(ENGINE_FORMATS) == set(ENGINES)
    assert ENGINE_FORMATS["pwg-only"] == ("image/pwg-raster",)
    assert ENGINE_FORMATS["urf-only"] == ("image/urf",)


def test_cli_takes_engine_variant_and_new_faults():
    from lab.cli import _parser

    args = _parser().parse_args(["up", "--engine", "pwg-only"])
    assert args.engine == "pwg-only"
    assert _parser().parse_args(["up"]).engine == "pdf"
    with pytest.raises(SystemExit):
        _parser().parse_args(["up", "--engine", "postscript"])
    for kind in ("engine-media-empty", "engine-media-ok"):
        assert _parser().parse_args(["fault", kind]).kind == kind
