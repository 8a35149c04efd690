"""provisioning/image/build-image as a module (it is a script without .py), for the recipe's tests
(tests/unit/test_image_recipe.py, tests/integration/test_image_packages.py): loaded once."""

from __future__ import annotations

import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "provisioning/image"


def build_image_module():
    if "build_image" in sys.modules:
        return sys.modules["build_image"]
    loader = SourceFileLoader("build_image", str(RECIPE / "build-image"))
    module = module_from_spec(spec_from_loader("build_image", loader))
    sys.modules["build_image"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module
