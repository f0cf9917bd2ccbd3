"""scripts/benchmark.py on the tiny model: every variant, its counts, floor, memory, the runner."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_benchmark_side_by_side(tmp_path, tiny, capsys) -> None:
    bench = load_script("benchmark")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = bench.main(["--backbone", "tiny", "--device", "cpu", "--steps", "8", "--skip", "2",
                         "--targets", "2", "--repeats", "1", "--dtypes", "float32,bfloat16",
                         "--timestep-batch", "1,3", "--run-processes", "1", "--run-copies", "1", "--run-timeout", "300",
                         "--json", str(out), "--plot", str(png)])
    rows = {(r["dtype"], r["timestep_batch"]): r for r in result["rows"]}
    assert set(rows) == {("float32", 1), ("float32", 3), ("bfloat16", 1), ("bfloat16", 3)}
    for (dtype, batch), r in rows.items():
        inv, edit = r["inversion"], r["edit"]
        # 6 computed steps: 6 sequential calls of 2 rows, or ceil(6/3) = 2 calls of 6 rows
        assert inv["nfe"] == (6 if batch == 1 else 2)
        assert inv["rows_per_call"] == ([2] if batch == 1 else [6])
        assert edit["nfe"] == 6 and edit["rows_per_call"] == [4]  # 2 targets x 2 guidance rows
        assert inv["floor_seconds"] > 0 and edit["floor_seconds"] > 0 and inv["peak_bytes"] is not None
        assert r["per_edit_seconds"] > inv["seconds"] + edit["seconds"]
        assert r["reconstruction_max_abs"] <= 1e-4
        assert r["max_abs_zs_vs_sequential"] <= (0 if batch == 1 else 1e-3)
        assert r["backbone"]["dtype"] == dtype
    (run,) = result["run"]
    assert run["processes"] == 1 and run["edits"] == 5 and run["edits_per_minute"] > 0, run
    saved = json.loads(out.read_text())
    assert saved["steps"] == 8 and len(saved["rows"]) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| bfloat16 | 3 |" in printed and "edits/min" in printed
