"""The noise-space figures on the analytic Gaussian model (Figures 5 and 6) and their scripts.

3. Edit-friendly angles peak in [150°, 180°], regular angles average 90° ± 10°; edit-friendly
   z variance exceeds the native one by a clear factor; CycleDiffusion's maps look native.
4. Both scripts run in-process on small settings and write their PNGs and CSVs.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
from PIL import Image

from framework.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"editfriendly_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    stats = load_script("toy_gaussian").main(["--out", str(out), "--steps", "40", "--draws", "300", "--seed", "0"])
    return out, stats


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    out = tmp_path_factory.mktemp("noise")
    argv = ["--out", str(out), "--samples", "10", "--steps", "50", "--dim", "16", "--seed", "0"]
    return out, load_script("noise_statistics").main(argv)


def test_toy_angle_histograms(toy):
    _, stats = toy
    ef, reg = stats["edit_friendly"], stats["regular"]
    assert 150.0 <= ef["peak_bin_low"] < ef["peak_bin_high"] <= 180.0, ef
    assert abs(reg["mean_angle"] - 90.0) <= 10.0, reg
    assert ef["mean_angle"] > reg["mean_angle"] + 15.0
    assert ef["z_variance"] > 3.0 * reg["z_variance"]


def test_noise_statistics_gaussian(noise):
    _, s = noise
    native, ef, cd = s["native"], s["edit_friendly"], s["cycle_diffusion"]
    # native maps: what sampling drew, N(0, I) and independent
    assert abs(native["median_variance"] - 1.0) < 0.15 and abs(native["median_correlation"]) < 0.1
    # edit-friendly: larger variance and negatively correlated across steps
    assert ef["median_variance_ratio_to_native"] > 3.0, ef
    assert ef["median_correlation"] < -0.2, ef
    # CycleDiffusion: native-looking
    assert 0.8 < cd["median_variance"] < 1.25, cd
    assert abs(cd["median_correlation"]) < 0.1, cd


def test_toy_script_files(toy):
    out, _ = toy
    assert Image.open(out / "figure5.png").size[0] > 100
    hist = read_csv(out / "angle_histogram.csv")
    assert len(hist) == 18 and sum(int(r["regular"]) for r in hist) == 300 * 39
    angles = read_csv(out / "angles.csv")
    assert len(angles) == 2 * 300 * 39
    paths = read_csv(out / "paths.csv")
    assert len(paths) == 2 * 41 and {r["method"] for r in paths} == {"regular", "edit_friendly"}


def test_noise_statistics_script_files(noise):
    out, _ = noise
    assert Image.open(out / "noise_statistics.png").size[0] > 100
    rows = read_csv(out / "noise_statistics.csv")
    assert [int(r["step"]) for r in rows] == list(range(50, 0, -1))
    assert float(rows[-1]["var_native"]) > 0 and rows[-1]["corr_native"] == ""


def test_noise_statistics_on_tiny_and_an_image_folder(tmp_path, photo_path, capsys):
    """Any backbone: model samples on tiny, or an image folder."""
    ns = load_script("noise_statistics")
    s = ns.main(["--backbone", "tiny", "--samples", "2", "--steps", "4", "--out", str(tmp_path / "a")])
    assert set(s) == {"native", "edit_friendly", "cycle_diffusion"}
    assert (tmp_path / "a" / "noise_statistics.png").exists()
    s = ns.main(
        ["--backbone", "tiny", "--images", str(photo_path.parent), "--steps", "3", "--out", str(tmp_path / "b")]
    )
    assert len(read_csv(tmp_path / "b" / "noise_statistics.csv")) == 3
    assert "edit-friendly / native variance" in capsys.readouterr().out


def test_script_input_errors(tmp_path):
    ns = load_script("noise_statistics")
    with pytest.raises(InputError, match="--dim"):
        ns.main(["--backbone", "tiny", "--dim", "4", "--out", str(tmp_path)])
    with pytest.raises(InputError, match="--eta"):
        ns.main(["--eta", "0", "--out", str(tmp_path)])
    with pytest.raises(InputError, match="--images"):
        ns.main(["--images", str(tmp_path / "missing"), "--steps", "3", "--out", str(tmp_path)])
    with pytest.raises(InputError, match="gaussian"):
        load_script("toy_gaussian").main(["--backbone", "tiny", "--out", str(tmp_path)])
