"""The layering rules of docs/architecture.md: the core imports no plugin, and the reverse loop
gets its step rule from the inversion, not from a table that plugins fill on import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from framework.errors import InputError
from framework.inversion import Inversion

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_the_core_imports_no_plugin() -> None:
    """Only the registry's loader (``import plugins``, which registers everything) names the
    plugin package; everything else reaches plugins through the registry by name."""
    offenders = []
    for path in sorted(ROOT.glob("framework/**/*.py")):
        for line, module in _imported_modules(path):
            if module == "plugins" and path == ROOT / "framework" / "registry.py":
                continue
            if module == "plugins" or module.startswith("plugins."):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, offenders


def test_the_runner_and_the_report_do_not_import_each_other() -> None:
    """``framework.experiment`` writes results tables and ``framework.report`` reads them; what
    both need (the table format, the statistics) lives below both (``framework.tables``,
    ``framework.stats``)."""
    offenders = []
    for pkg, other in (("experiment", "framework.report"), ("report", "framework.experiment")):
        for path in sorted(ROOT.glob(f"framework/{pkg}/*.py")):
            for line, module in _imported_modules(path):
                if module == other or module.startswith(other + "."):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    for path in (ROOT / "framework" / "tables.py", ROOT / "framework" / "stats.py"):
        for line, module in _imported_modules(path):
            if module.startswith(("framework.experiment", "framework.report")):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, offenders


def test_the_runner_takes_its_defaults_from_the_schema() -> None:
    """The run's top-level defaults are written once, in ``framework.schema``: the runner's
    source holds none of their values."""
    from framework import schema

    source = (ROOT / "framework" / "experiment" / "run.py").read_text(encoding="utf-8")
    assert schema.RUN_DEFAULTS["output_dir"] == "runs/experiment" and schema.RUN_DEFAULTS["seed"] == 0
    for literal in ('"runs/experiment"', '"seed", 0', '"max_table_images", 1000', '"reconstructions", "auto"'):
        assert literal not in source, literal


def test_the_loop_has_no_global_table_of_step_rules() -> None:
    import framework.sampling as sampling

    assert not hasattr(sampling, "STEP_RULES")


def test_an_inversion_carries_its_rule_factory(tiny) -> None:
    from framework.registry import INVERTERS
    from plugins.inverters.edict import EDICTRule, edict_regeneration

    x0 = torch.zeros(1, 4, 16, 16)
    inv = INVERTERS.build({"name": "edict"}).invert(tiny, x0, "a cat", num_steps=3)
    assert inv.rule == "edict" and inv.rule_factory is edict_regeneration
    assert isinstance(inv.regeneration(tiny, inv.start_step, 2), EDICTRule)
    plain = Inversion(xts=torch.zeros(2, 1, 4, 16, 16), zs=None, timesteps=torch.tensor([1, 2]), num_steps=2,
                      skip=1, eta=0.0, method="hand-made", source_prompt=["a"], guidance_scale=1.0)
    assert type(plain.regeneration(tiny, 1, 1)).__name__ == "DDPMRule"
    with pytest.raises(InputError, match="carries no rule_factory"):
        Inversion(**{**plain.__dict__, "rule": "edict"}).regeneration(tiny, 1, 1)
