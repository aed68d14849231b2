"""What the built wheel holds: every package folder of the tree is listed in pyproject.toml (an editable
install hides a missing one; a wheel built from the list would lack it), and the package data is declared."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("core", "passes", "runtime", "robustness", "deploy", "tools")


def test_every_package_folder_is_in_the_wheel_list():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tree = {"mstransform"} | {
        "mstransform." + ".".join(init.parent.relative_to(ROOT).parts)
        for room in ROOMS for init in (ROOT / room).rglob("__init__.py")}
    assert set(setup["packages"]) == tree
    assert setup["package-dir"] == {"mstransform": "."}
    assert all(list((ROOT / "deploy").glob(pattern)) for pattern in setup["package-data"]["mstransform.deploy"])
