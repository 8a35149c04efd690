"""Suite-wide fixtures and the prerequisite rule.

A test whose prerequisite is missing (root, a binary, a kernel feature) skips on a developer's
machine but *fails* in CI (CI=true): CI must never go green by running nothing. Only
hardware-in-the-loop tests may skip in CI, and they say why.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, what: str) -> None:
    """Stop the current test unless `condition` holds: skip locally, fail in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {what}", pytrace=False)
    pytest.skip(f"prerequisite missing: {what}")


def need_root() -> None:
    need(os.geteuid() == 0, "root (network namespaces, mounts, daemons)")


def need_binary(*names: str) -> None:
    for name in names:
        need(shutil.which(name) is not None or os.path.exists(name), f"binary {name}")


@pytest.fixture
def require():
    """The `need` function as a fixture, for tests that prefer injection."""
    return need


@pytest.fixture(scope="session")
def lab():
    """The lab's hosts and network (no daemons yet), built once per test session and torn down at
    the end, when nothing of it may remain. Modules start the services they need on it
    (`SomeService().start(lab)`; starts are idempotent). The prefix is `TP_LAB_PREFIX` or `tpt`,
    so a test run never touches a developer's running `tp` lab."""
    need_root()
    need_binary("ip", "nsenter", "unshare")
    from lab.lab import Lab
    from lab.layout import LabLayout

    os.environ.setdefault("TP_LAB_PREFIX", "tpt")
    the_lab = Lab(layout=LabLayout.from_env(), services=[])
    the_lab.down()  # leftovers of an interrupted earlier run
    the_lab.up()
    yield the_lab
    result = the_lab.down()
    assert result["leftovers"] == {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}
