"""Packaging: the wheel ships every module and config (setup.py finds the packages of framework/
and plugins/, folders with an ``__init__.py``; pyproject.toml's package-data takes configs/ one
folder deep), and every third-party import of framework/ and plugins/ is a declared dependency."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
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


#: modules whose third-party imports may come from an extra (the command that needs it says so)
EXTRA_MODULES = {"framework/demo.py": "demo", "framework/report/": "report"}


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


@functools.cache
def _distributions_of_modules() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _guarded(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``try: ... except ImportError`` (an availability check that
    turns a missing extra into a clear error)."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            h.type is not None
            and {n.id for n in ast.walk(h.type) if isinstance(n, ast.Name)} & {"ImportError", "ModuleNotFoundError"}
            for h in node.handlers
        ):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return guarded


def _imported_distributions(path: Path) -> set[str]:
    """The distributions (normalised names) that the third-party imports of one file come from,
    less the imports guarded by ``except ImportError``."""
    names = set()
    tree = ast.parse(path.read_text(), str(path))
    guarded = _guarded(tree)
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    first_party = {"framework", "plugins", "scripts", "tests", "editfriendly_configs"}
    mapping = _distributions_of_modules()
    dists = set()
    for name in names - first_party - set(sys.stdlib_module_names) - {"__future__"}:
        assert name in mapping, f"{path}: imports {name!r}, which no installed distribution provides"
        dists.update(d.lower().replace("_", "-") for d in mapping[name])
    return dists


def test_core_imports_are_core_dependencies() -> None:
    """framework/ and plugins/ import only what ``dependencies`` declares (or, for the modules of
    an optional command, what its extra declares; or inside ``try: ... except ImportError``):
    an undeclared import breaks a fresh install."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {k: {_requirement_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    undeclared = {}
    for path in sorted([*(ROOT / "framework").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        allowed = set(core)
        for prefix, extra in EXTRA_MODULES.items():
            if rel == prefix or rel.startswith(prefix):
                allowed |= extras[extra]
        missing = _imported_distributions(path) - allowed
        if missing:
            undeclared[rel] = sorted(missing)
    assert not undeclared, f"imports not declared in pyproject.toml: {undeclared}"
