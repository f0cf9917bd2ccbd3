"""The pieces together: every editor and the metrics inside `editfriendly run`, then
`editfriendly compare` on two real run directories made with the tiny backbone."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from PIL import Image

from framework.cli import main
from tests.helpers.metric_standins import standin_metric_configs
from tests.helpers.runs import make_yaml_dataset, read_csv, run_inprocess

METHODS = """
methods:
  - name: ef_text
    inverter: ddpm_edit_friendly
    editor: text
    sweep: {skip: [1, 2]}
  - name: ef_p2p
    inverter: ddpm_edit_friendly
    editor: {name: prompt_to_prompt, guidance_scale: 9}
  - name: ddim_pnp
    inverter: ddim
    editor: plug_and_play
  - name: cycle_zero_shot
    inverter: cycle_diffusion
    editor: {name: zero_shot, cross_attention_guidance: 0.03}
num_steps: 4
skip: 1
"""


def write_config(path: Path, data: Path, out: Path, metrics: list, seed: int) -> Path:
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "backbone": {"name": "tiny"},
                "data": {"name": "yaml_list", "path": str(data)},
                "metrics": metrics,
                "trainer": {"accelerator": "cpu", "devices": 1},
                "logger": {"name": "none"},
                "output_dir": str(out),
                "seed": seed,
            }
        )
        + METHODS
    )
    return path


@pytest.fixture(scope="module")
def two_runs(tiny, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("integration")
    data = make_yaml_dataset(root / "data", n=2)
    metrics = standin_metric_configs(root / "standins", ("lpips", "clip_score")) + ["time"]
    runs = []
    for seed in (0, 1):
        cfg = write_config(root / f"exp{seed}.yaml", data, root / f"run{seed}", metrics, seed)
        assert run_inprocess(cfg) == 0
        runs.append(root / f"run{seed}")
    return runs[0], runs[1]


def test_every_editor_runs_in_the_runner_and_metrics_fill_columns(two_runs) -> None:
    rows = read_csv(two_runs[0] / "results.csv")
    # 2 items with 1 and 2 targets (3 rows per method setting) x (2 text sweeps + 3 editors)
    assert len(rows) == 15
    assert {r["method"] for r in rows} == {"ef_text", "ef_p2p", "ddim_pnp", "cycle_zero_shot"}
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    for r in rows:
        for column in ("lpips", "clip_score", "inversion_seconds", "edit_seconds", "inversion_nfe", "edit_nfe"):
            value = float(r[column])
            assert math.isfinite(value), (column, r)
        assert float(r["lpips"]) > 0 and 0 <= float(r["clip_score"]) <= 100
        assert Image.open(two_runs[0] / r["output_path"]).size == (32, 32)
    assert {r["skip"] for r in rows if r["method"] == "ef_text"} == {"1", "2"}


def test_compare_reports_the_numbers_of_both_runs(two_runs, tmp_path) -> None:
    out = tmp_path / "report"
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--out", str(out), "--sample", "1"]) == 0
    for name in ("report.md", "report.html", "summary.csv", "scatter_clip_lpips.png"):
        assert (out / name).is_file(), name
    grids = list((out / "grids").glob("grid_*.png"))
    assert len(grids) == 1
    Image.open(grids[0]).verify()
    with open(out / "summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert len(summary) == 2 * 5  # two runs x (ef_text at two skips + three methods)
    md = (out / "report.md").read_text()
    for run in two_runs:
        rows = read_csv(run / "results.csv")
        for method in ("ef_p2p", "ddim_pnp", "cycle_zero_shot"):
            values = [float(r["lpips"]) for r in rows if r["method"] == method]
            mean = sum(values) / len(values)
            assert any(
                line["method"] == method and float(line["lpips_mean"]) == pytest.approx(mean, rel=1e-9)
                and int(line["lpips_n"]) == len(values)
                for line in summary
            ), (run, method)
    # the runner's bookkeeping columns are neither parameters nor metrics
    assert "| run | method | skip | inversion | lpips ↓ | clip_score ↑ |" in md
    # what every setting shares (steps, rows, failed) is stated once under the table
    assert "not shown as columns): num_steps = 4, rows = 3, failed = 0." in md
    assert "sha256" not in md and "inversion_group" not in md and "inversion_needed" not in md
    assert "target_index" not in md and "seed_index" not in md
