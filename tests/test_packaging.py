"""The wheel ships every module and config: setup.py finds the packages of framework/ and plugins/
(folders with an ``__init__.py``), pyproject.toml's package-data takes configs/ one folder deep."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_folder_is_a_package() -> None:
    """A folder of modules without ``__init__.py`` would be left out of the wheel."""
    missing = sorted(
        str(folder.relative_to(ROOT))
        for top in ("framework", "plugins")
        for folder in {p.parent for p in (ROOT / top).rglob("*.py")}
        if not (folder / "__init__.py").is_file()
    )
    assert not missing, f"folders with modules but no __init__.py (not shipped): {missing}"


def test_shipped_configs_match_the_package_data_globs() -> None:
    """Every YAML under configs/ matches one of ``editfriendly_configs``' package-data globs."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "editfriendly_configs"
    ]
    configs = ROOT / "configs"
    yamls = sorted(p.relative_to(configs) for p in configs.rglob("*.yaml"))
    assert yamls
    unshipped = [str(p) for p in yamls if not any(p.match(g) and len(p.parts) == len(Path(g).parts) for g in globs)]
    assert not unshipped, f"configs the wheel would not ship (extend the globs): {unshipped}"
