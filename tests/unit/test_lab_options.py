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
