"""The training script and the Figure 7 / Figure 8 scripts run at tiny settings and write their files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from scripts import color_experiment, shift_experiment, train_pixel_ddpm


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "model"
    rc = train_pixel_ddpm.main([
        "--out", str(out), "--resolution", "16", "--width", "8", "--batch-size", "8",
        "--max-steps", "4", "--save-every", "2", "--no-progress", "--accelerator", "cpu",
    ])
    assert rc == 0
    return out


def test_training_writes_a_pixel_ddpm_folder(trained: Path):
    from framework.backbone import load_backbone
    from plugins.backbones.pixel_ddpm import PixelDDPMBackbone

    info = json.loads((trained / "training.json").read_text())
    assert info["steps"] == 4 and info["images"] == 1797 and info["resolution"] == 16
    assert (trained / "unet" / "config.json").exists() and (trained / "scheduler" / "scheduler_config.json").exists()
    backbone = load_backbone(str(trained), device="cpu")
    assert isinstance(backbone, PixelDDPMBackbone) and backbone.resolution == 16


def test_digits_dataset_shapes_and_colors():
    gray = train_pixel_ddpm.digits_dataset(16, "gray", 0)
    color = train_pixel_ddpm.digits_dataset(32, "random", 0)
    assert gray.shape == (1797, 3, 16, 16) and color.shape == (1797, 3, 32, 32)
    assert gray.min() >= -1 and gray.max() <= 1 and color.min() >= -1 and color.max() <= 1
    assert (gray[:, 0] == gray[:, 1]).all()
    assert (color[:, 0] - color[:, 1]).abs().max() > 0.5  # really colored


def test_training_rejects_bad_data(tmp_path: Path, capsys):
    assert train_pixel_ddpm.main(["--out", str(tmp_path / "m"), "--data", str(tmp_path / "none")]) == 2
    assert "folder of images" in capsys.readouterr().err


def test_shift_experiment(trained: Path, tmp_path: Path):
    out = tmp_path / "shift"
    rc = shift_experiment.main([
        "--model", str(trained), "--out", str(out), "--steps", "6", "--shifts", "0,3",
        "--num-images", "2", "--seed", "1",
    ])
    assert rc == 0
    for name in ("shift.csv", "shift_plot.png", "shift_grid.png"):
        assert (out / name).stat().st_size > 0
    rows = list(csv.DictReader((out / "shift.csv").read_text().splitlines()))
    spaces = {(r["kind"], r["noise_space"]) for r in rows}
    assert {("generated", "native"), ("generated", "edit_friendly"), ("real", "edit_friendly")} <= spaces
    assert len(rows) == len(spaces) * 2 * 2
    # no shift: both noise spaces regenerate their image (edit-friendly exactly, native by construction)
    for r in rows:
        if r["shift"] == "0":
            assert float(r["distance"]) < 1e-8, r


def test_color_experiment(trained: Path, tmp_path: Path):
    out = tmp_path / "color"
    rc = color_experiment.main([
        "--model", str(trained), "--out", str(out), "--steps", "6", "--num-images", "1",
        "--strengths", "0,1", "--sdedit", "0.5",
    ])
    assert rc == 0
    for name in ("color.csv", "color_grid.png", "color_tradeoff.png"):
        assert (out / name).stat().st_size > 0
    rows = list(csv.DictReader((out / "color.csv").read_text().splitlines()))
    assert [(r["method"], float(r["strength"])) for r in rows] == [
        ("color_strokes", 0.0), ("color_strokes", 1.0), ("sdedit", 0.5)
    ]
    assert float(rows[0]["mse_outside"]) < 1e-8  # strength 0 is the exact reconstruction


def test_scripts_report_bad_arguments(tmp_path: Path, capsys):
    assert shift_experiment.main(["--out", str(tmp_path), "--shifts", "a,b"]) == 2
    assert "--shifts" in capsys.readouterr().err
    assert color_experiment.main(["--out", str(tmp_path), "--strengths", "x"]) == 2
    assert "--strengths" in capsys.readouterr().err
