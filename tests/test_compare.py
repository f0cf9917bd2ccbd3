"""``editfriendly compare`` on run directories made by hand in the runner's format (results.csv,
input and edit PNGs) with metric values from the stand-in networks."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import t as student_t

from framework import cli
from framework.images import load_image_tensor, tensor_to_pil
from framework.metrics import MetricInput
from framework.registry import METRICS
from framework.report import compare
from framework.report.runs import classify_columns, read_run
from framework.report.stats import mean_ci
from tests.helpers.metric_standins import standin_metric_configs

HEADER = [
    "item_id", "method", "target_prompt", "source_prompt", "seed", "status", "error",
    "output_path", "input_path",
]  # fmt: skip
ITEMS = {
    "flower": ("a photo of a flower", ["a painting of a flower", "a photo of a red flower"]),
    "flower_crop": ("a photo of a flower", ["a sketch of a flower", "a lego flower"]),
    "flower_flip": ("a photo of a flower", ["a drawing of a flower", "a photo of a blue flower"]),
}


def make_run(root: Path, name: str, photo_path: Path, metrics: list, method: str, sweep: dict,
             fail_item: str | None = None) -> Path:  # fmt: skip
    """A run directory like the runner's: images + results.csv with parameter and metric columns.

    The "edits" are the input perturbed with a strength that depends on the parameter value and
    the target (no diffusion here: the runner's own tests cover that); the metric columns hold
    the stand-in metrics' values for them and the time columns deterministic made-up values.
    """
    run = root / name
    (run / "inputs").mkdir(parents=True)
    (run / "images").mkdir()
    photo = load_image_tensor(photo_path, 32, 8)
    images = {
        "flower": photo,
        "flower_crop": load_image_tensor(photo_path, 64, 8)[..., 8:40, 16:48],
        "flower_flip": photo.flip(-1),
    }
    param = next(iter(sweep))
    g = torch.Generator().manual_seed(len(name))
    rows = []
    for i, (item, (source, targets)) in enumerate(ITEMS.items()):
        inp = run / "inputs" / f"{item}.png"
        tensor_to_pil(images[item])[0].save(inp)
        for j, value in enumerate(sweep[param]):
            base = {"item_id": item, "method": method, "source_prompt": source, "seed": 0, param: value,
                    "input_path": f"inputs/{item}.png"}  # fmt: skip
            if item == fail_item:
                for target in targets:
                    rows.append(base | {"target_prompt": target, "status": "failed", "error": "corrupt image file"})
                continue
            strength = torch.tensor([0.1 + 0.3 * j + 0.1 * k for k in range(len(targets))]).view(-1, 1, 1, 1)
            edits = (images[item] + strength * torch.randn(len(targets), 3, 32, 32, generator=g)).clamp(-1, 1)
            edits = torch.stack([load_image_tensor_from(tensor_to_pil(e[None])[0]) for e in edits])  # as stored
            batch = MetricInput(images[item], edits, source, targets)
            values = [{} for _ in targets]
            for metric in metrics:
                for v, m in zip(values, metric.compute(batch)):
                    v.update(m)
            for k, target in enumerate(targets):
                out = run / "images" / f"{item}_{method}_{param}{value}_{k}.png"
                tensor_to_pil(edits[k : k + 1])[0].save(out)
                rows.append(
                    base
                    | {"target_prompt": target, "status": "ok", "error": "",
                       "output_path": str(out) if k == 1 else f"images/{out.name}",  # absolute and relative
                       "inversion_seconds": 1.0 + 0.1 * i, "edit_seconds": 2.0 + j + 0.05 * i + 0.01 * k,
                       "inversion_nfe": 64 + 16 * j, "edit_nfe": 128 + 32 * j + k, "note": "hand-made"}
                    | values[k]
                )  # fmt: skip
    columns = HEADER + [param] + ["lpips", "lpips_bg", "clip_score", "clip_score_edited"]
    columns += ["inversion_seconds", "edit_seconds", "inversion_nfe", "edit_nfe", "note"]
    with open(run / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    return run


def load_image_tensor_from(img: Image.Image) -> torch.Tensor:
    """(3, H, W) in [-1, 1] of a PIL image (the 8-bit values the PNG will hold)."""
    return torch.from_numpy(np.array(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, photo_path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    metrics = [METRICS.build(c) for c in standin_metric_configs(root / "standins")]
    for m in metrics:
        m.setup("cpu")
    a = make_run(root, "run_a", photo_path, metrics, "ef_text", {"skip": [2, 5]})
    b = make_run(root, "run_b", photo_path, metrics, "ef_text_cfg", {"editor.guidance_scale": [3.0, 9.0]},
                 fail_item="flower_flip")  # fmt: skip
    return a, b


def expected(run: Path, method: str, param: str, value: str, column: str) -> tuple[float, float | None, int]:
    with open(run / "results.csv", newline="") as fh:
        vals = [
            float(r[column]) for r in csv.DictReader(fh)
            if r["method"] == method and r[param] == value and r["status"] == "ok" and r[column] != ""
        ]  # fmt: skip
    n = len(vals)
    half = float(student_t.ppf(0.975, n - 1) * np.std(vals, ddof=1) / math.sqrt(n)) if n > 1 else None
    return float(np.mean(vals)), half, n


def test_columns_are_classified(runs):
    metric_cols, param_cols = classify_columns([read_run(r) for r in runs])
    assert param_cols == ["skip", "editor.guidance_scale"]
    assert metric_cols == [
        "lpips", "lpips_bg", "clip_score", "clip_score_edited",
        "inversion_seconds", "edit_seconds", "inversion_nfe", "edit_nfe",
    ]  # fmt: skip  ("note" is text, lpips_bg/clip_score_edited empty without masks)


def test_compare_two_runs_writes_report_scatter_and_grids(runs, tmp_path):
    run_a, run_b = runs
    out = tmp_path / "report"
    rc = cli.main(["compare", str(run_a), str(run_b), "--out", str(out), "--items", "flower", "flower_flip"])
    assert rc == 0
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for f in ("report.md", "report.html", "summary.csv", "scatter_clip_lpips.png"):
        assert (out / f).is_file(), f
    grid_a = Image.open(out / "grids" / "grid_flower.png")
    assert grid_a.size == (190 * 5, 190 * 2 + 50)  # input + 4 method settings; 2 target prompts
    Image.open(out / "scatter_clip_lpips.png").verify()
    assert "![clip_score vs lpips](scatter_clip_lpips.png)" in md and "grids/grid_flower.png" in md
    assert "<table>" in page and "scatter_clip_lpips.png" in page
    # the table's numbers are those of the results tables
    with open(out / "summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert len(summary) == 4
    for line in summary:
        run, param = (run_a, "skip") if line["method"] == "ef_text" else (run_b, "editor.guidance_scale")
        for column in ("lpips", "clip_score", "edit_seconds", "edit_nfe"):
            mean, half, n = expected(run, line["method"], param, line[param], column)
            assert float(line[f"{column}_mean"]) == pytest.approx(mean, rel=1e-9)
            assert int(line[f"{column}_n"]) == n
            assert float(line[f"{column}_ci95"]) == pytest.approx(half, rel=1e-9)
            assert f"{mean:.4g} ± {half:.4g}" in md
        assert line["rows"] == "6" and line["failed"] == ("2" if line["method"] == "ef_text_cfg" else "0")
        assert int(line["lpips_n"]) == (4 if line["method"] == "ef_text_cfg" else 6)
    assert "corrupt image file" in md
    # each run has its own parameter: both go beside the method; rows (6 for every setting) is stated once
    assert "| run | method | failed | lpips ↓ |" in md
    assert "| run_b | ef_text_cfg (editor.guidance_scale=3.0) | 2 |" in md
    assert "(not shown as columns): rows = 6." in md
    assert "lpips ↓" in md and "clip_score ↑" in md
    assert "left out): lpips_bg, clip_score_edited" in md and "lpips_bg ↓" not in md  # no masks here
    # a failed item's cells are marked in its grid
    assert Image.open(out / "grids" / "grid_flower_flip.png").size == (190 * 5, 190 * 2 + 50)


def test_compare_one_run_sampled_items_and_wandb(runs, tmp_path, monkeypatch, capsys):
    """A run whose config.yaml configures a wandb logger is logged (offline) without --wandb."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run_a"
    shutil.copytree(runs[0], run)
    (run / "config.yaml").write_text(
        "methods:\n  - name: ef_text\n    sweep: {skip: [2, 5]}\n"
        "logger: {name: wandb, mode: offline, project: editfriendly-test}\n"
    )
    out = tmp_path / "one"
    assert cli.main(["compare", str(run), "--out", str(out), "--sample", "2", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    grids = sorted((out / "grids").glob("grid_*.png"))
    assert len(grids) == 2 and all(str(p) in printed for p in grids)
    wandb_dir = Path(printed.split("wandb: ")[1].strip())
    assert wandb_dir.is_relative_to(out)
    tables = list(wandb_dir.rglob("comparison_*.table.json"))
    assert tables, list(wandb_dir.rglob("*"))
    logged = json.loads(tables[0].read_text())
    assert logged["columns"][:3] == ["method", "skip", "lpips ↓"]  # rows and failed: the same everywhere
    lp = logged["columns"].index("lpips ↓")
    mean, half, _ = expected(runs[0], "ef_text", "skip", "2", "lpips")
    assert logged["data"][0][lp] == f"{mean:.4g} ± {half:.4g}"
    assert len(list(wandb_dir.rglob("*.png"))) == 3  # the scatter and the two grids
    # the same selection through the API, without wandb
    result = compare([run], tmp_path / "api", sample=2, seed=3)
    assert sorted(p.name for p in result["grids"].values()) == [p.name for p in grids]
    assert [g.label for g in result["groups"]] == ["ef_text (skip=2)", "ef_text (skip=5)"]
    assert result["wandb_dir"] is None
    assert cli.main(["compare", str(run), "--out", str(tmp_path / "quiet"), "--no-wandb"]) == 0
    assert "wandb:" not in capsys.readouterr().out


def test_compare_errors(runs, tmp_path, capsys):
    assert cli.main(["compare", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["compare", str(tmp_path / "empty")]) == 2
    assert "no results.csv" in capsys.readouterr().err
    assert cli.main(["compare", str(runs[0]), "--out", str(tmp_path / "o"), "--items", "unicorn"]) == 2
    err = capsys.readouterr().err
    assert "unicorn" in err and "flower" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.csv").write_text("a,b\n1,2\n")
    assert cli.main(["compare", str(bad)]) == 2
    assert "item_id, method" in capsys.readouterr().err


def test_reader_is_tolerant(tmp_path):
    """Extra columns, missing status, empty and inf cells, no images at all."""
    run = tmp_path / "handmade"
    run.mkdir()
    (run / "results.csv").write_text(
        "item_id,method,extra_text,score,skip\n"
        "a,m,hello,1.0,3\n"
        "b,m,world,3.0,3\n"
        "c,m,x,,3\n"
        "d,m,y,inf,3\n"
    )
    result = compare([run], tmp_path / "out", sample=1)
    assert result["metric_columns"] == ["score"] and result["param_columns"] == ["skip"]
    mean, half, n = result["groups"][0].stats["score"]
    assert (mean, n) == (2.0, 2) and half == pytest.approx(student_t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))
    assert result["scatter"] is None and "(no scatter" in (tmp_path / "out" / "report.md").read_text()
    assert mean_ci([]) == (None, None, 0) and mean_ci([5.0]) == (5.0, None, 1)
    # explicit roles
    forced = compare([run], tmp_path / "out2", sample=0, metrics=["score", "skip"], params=[])
    assert forced["metric_columns"] == ["score", "skip"] and forced["param_columns"] == []
