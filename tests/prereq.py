"""The prerequisite rule, importable from any test module as `from prereq import need`.

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
