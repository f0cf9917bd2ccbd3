"""scripts/benchmark.py runs on the tiny model and reports NFE and the network floor."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_reports_counts_and_floor(tmp_path, tiny, capsys) -> None:
    bench = load_script("benchmark")
    out = tmp_path / "bench.json"
    result = bench.main(["--backbone", "tiny", "--device", "cpu", "--steps", "12", "--skip", "4",
                         "--targets", "2", "--repeats", "1", "--json", str(out)])
    assert result["inversion"]["nfe"] == 8 and result["edit"]["nfe"] == 8
    assert result["inversion"]["floor_seconds"] > 0 and result["edit"]["seconds"] > 0
    assert json.loads(out.read_text())["targets"] == 2
    assert "wall/floor" in capsys.readouterr().out
