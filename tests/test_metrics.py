"""Metric plugins on tiny offline stand-in networks: properties and closed forms."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from framework.errors import ConfigError, InputError, WeightsNotFoundError
from framework.images import load_image_tensor, tensor_to_pil
from framework.metrics import MetricInput
from framework.registry import METRICS
from tests.helpers.metric_standins import build_lpips_trunk, build_lpips_weights, build_standins, standin_metric_configs


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_standins(tmp_path_factory.mktemp("metric-standins"))


@pytest.fixture(scope="module")
def image(photo_path: Path) -> torch.Tensor:
    """The real photo at 64×64, (1, 3, 64, 64) in [-1, 1]."""
    return load_image_tensor(photo_path, 64, 8)


def noisy(x: torch.Tensor, level: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + level * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def centre_mask(size: int, lo: int, hi: int) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., lo:hi, lo:hi] = 1
    return m


def inside(x: torch.Tensor, mask: torch.Tensor, value: float = 0.9) -> torch.Tensor:
    """x with the pixels inside the mask replaced by ``value``."""
    return torch.where(mask.bool(), torch.full_like(x, value), x)


def run(metric, src, edits, prompts=None, **kw) -> list[dict]:
    prompts = prompts or ["a photo of a cat"] * edits.shape[0]
    return metric.compute(MetricInput(src, edits, "a photo of a flower", prompts, **kw))


def col(rows: list[dict], name: str) -> list:
    return [r[name] for r in rows]


# ----------------------------------------------------------------------------------- registry
def test_registered_with_columns_and_flags(standins):
    names = set(METRICS.names())
    assert {"lpips", "clip_score", "psnr", "ssim", "mse", "structure_distance", "diversity", "reconstruction"} <= names
    assert METRICS.get("diversity").needs_samples and not METRICS.get("lpips").needs_samples
    assert METRICS.get("reconstruction").needs_reconstruction
    assert METRICS.build("psnr").columns == ("psnr", "psnr_bg")
    assert METRICS.build({"name": "psnr", "background": False}).columns == ("psnr",)
    assert METRICS.build({"name": "clip_score", "model": str(standins["clip"])}).columns == (
        "clip_score",
        "clip_score_edited",
    )
    with pytest.raises(ConfigError, match="on_missing"):
        METRICS.build({"name": "lpips", "on_missing": "ignore"})
    with pytest.raises(ConfigError, match="weigths"):
        METRICS.build({"name": "lpips", "weigths": "x"})
    cfgs = standin_metric_configs(Path(standins["clip"]).parent)
    assert [c["name"] for c in cfgs] == ["lpips", "clip_score"]
    for c in cfgs:
        METRICS.build(c)


# -------------------------------------------------------------------------------------- lpips
@pytest.fixture(scope="module")
def lpips_metric(standins):
    m = METRICS.build({"name": "lpips", "weights": str(standins["lpips"])})
    m.setup("cpu")
    return m


def test_lpips_identity_symmetry_and_noise(lpips_metric, image):
    edits = torch.cat([image, noisy(image, 0.05), noisy(image, 0.2), noisy(image, 0.6)])
    d = col(run(lpips_metric, image, edits), "lpips")
    assert d[0] == pytest.approx(0.0, abs=1e-7)
    assert 0 < d[1] < d[2] < d[3], d
    # symmetric: swap the roles of input and edit
    back = run(lpips_metric, edits[2:3], image)[0]["lpips"]
    assert back == pytest.approx(d[2], rel=1e-5)
    # batching does not change values
    assert run(lpips_metric, image, edits[3:4])[0]["lpips"] == pytest.approx(d[3], rel=1e-5)


def test_lpips_background_ignores_edited_region(lpips_metric, image):
    mask = centre_mask(64, 16, 48)
    edit = noisy(image, 0.2)
    a, b = run(lpips_metric, image, torch.cat([edit, inside(edit, mask)]), mask=mask)
    assert a["lpips_bg"] == pytest.approx(b["lpips_bg"], rel=1e-6)
    assert a["lpips"] != pytest.approx(b["lpips"], rel=1e-3)
    assert run(lpips_metric, image, inside(image, mask), mask=mask)[0]["lpips_bg"] == pytest.approx(0, abs=1e-7)
    assert run(lpips_metric, image, edit)[0]["lpips_bg"] is None  # no mask, no background score


def test_lpips_torchvision_trunk_file(tmp_path, image):
    path = build_lpips_trunk(tmp_path, "alex", seed=3)
    m = METRICS.build({"name": "lpips", "weights": str(path), "background": False})
    m.setup("cpu")
    state = torch.load(path, weights_only=True)
    assert torch.equal(m.model.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(m.model.net.slice5, "10").weight, state["features.10.weight"])
    d = col(run(m, image, torch.cat([image, noisy(image, 0.3)])), "lpips")
    assert d[0] == pytest.approx(0, abs=1e-7) and d[1] > 0
    bad = tmp_path / "bad.pth"
    torch.save({"something.else": torch.zeros(1)}, bad)
    with pytest.raises(WeightsNotFoundError, match="not a torchvision alex"):
        METRICS.build({"name": "lpips", "weights": str(bad)}).setup("cpu")


def test_lpips_missing_weights(tmp_path, monkeypatch, image, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match=r"(?s)metric 'lpips'.*option 'weights'"):
        METRICS.build({"name": "lpips", "weights": str(tmp_path / "absent.pth")}).setup("cpu")
    with pytest.raises(WeightsNotFoundError, match=r"(?s)metric 'lpips'.*not cached.*option 'weights'"):
        METRICS.build({"name": "lpips", "local_files_only": True}).setup("cpu")
    m = METRICS.build({"name": "lpips", "local_files_only": True, "on_missing": "skip"})
    with caplog.at_level(logging.WARNING):
        m.setup("cpu")
    assert "on_missing: skip" in caplog.text
    rows = run(m, image, torch.cat([image, image]))
    assert rows == [{"lpips": None, "lpips_bg": None}] * 2


# --------------------------------------------------------------------------------- clip_score
@pytest.fixture(scope="module")
def clip_metric(standins):
    m = METRICS.build({"name": "clip_score", "model": str(standins["clip"])})
    m.setup("cpu")
    return m


def test_clip_score_matches_torchmetrics(clip_metric, standins):
    """Same number as torchmetrics' clip_score (100·max(cos, 0)) with the same model."""
    from torchmetrics.functional.multimodal import clip_score

    class Features(torch.nn.Module):  # torchmetrics expects tensors from get_*_features
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.config = model.config

        def get_image_features(self, *args, **kw):
            return self.model.get_image_features(*args, **kw).pooler_output

        def get_text_features(self, *args, **kw):
            return self.model.get_text_features(*args, **kw).pooler_output

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    prompts = ["a photo of a dog", "a red car", "a tiger in the snow", "a painting of a house"]
    rows = run(clip_metric, images[:1], images, prompts)
    uint8 = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in tensor_to_pil(images)])
    pair = (Features(clip_metric.model), clip_metric.processor)
    for k in range(4):
        ref = float(clip_score(uint8[k : k + 1], [prompts[k]], model_name_or_path=lambda: pair))
        assert rows[k]["clip_score"] == pytest.approx(max(ref, 0.0), abs=1e-3)
        assert 0.0 <= rows[k]["clip_score"] <= 100.0
    # the edit's own row does not depend on the batch it came in
    assert run(clip_metric, images[:1], images[2:3], prompts[2:3])[0]["clip_score"] == pytest.approx(
        rows[2]["clip_score"], abs=1e-4
    )


def test_clip_score_edited_region(clip_metric):
    g = torch.Generator().manual_seed(1)
    edit = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    mask = centre_mask(32, 8, 24)
    other = torch.where(mask.bool(), edit, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1)  # new background
    a, b = run(clip_metric, edit, torch.cat([edit, other]), ["a photo of a cat"] * 2, mask=mask)
    assert a["clip_score_edited"] == pytest.approx(b["clip_score_edited"], abs=1e-5)
    assert a["clip_score"] != pytest.approx(b["clip_score"], abs=1e-3)
    assert run(clip_metric, edit, edit)[0]["clip_score_edited"] is None


def test_clip_score_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match=r"(?s)metric 'clip_score'.*option 'model'"):
        METRICS.build({"name": "clip_score", "model": str(tmp_path / "absent")}).setup("cpu")
    with pytest.raises(
        WeightsNotFoundError, match=r"(?s)metric 'clip_score'.*openai/clip-vit-large-patch14.*option 'model'"
    ):
        METRICS.build({"name": "clip_score", "local_files_only": True}).setup("cpu")
    m = METRICS.build({"name": "clip_score", "local_files_only": True, "on_missing": "skip"})
    m.setup("cpu")
    x = torch.zeros(1, 3, 32, 32)
    assert run(m, x, x) == [{"clip_score": None, "clip_score_edited": None}]


# ------------------------------------------------------------------------ psnr / ssim / mse
def test_pixel_closed_forms():
    """A constant offset c (in [0, 1] units) gives MSE c², PSNR 10·log10(1/c²)."""
    c = 0.1
    src = torch.zeros(1, 3, 32, 32)  # 0.5 grey
    edit = src + 2 * c  # [-1, 1] units
    mask = centre_mask(32, 0, 16)  # a quarter of the image is "edited"
    f_bg = 0.75
    psnr, ssim, mse = (METRICS.build(n) for n in ("psnr", "ssim", "mse"))
    p = run(psnr, src, edit, mask=mask)[0]
    assert p["psnr"] == pytest.approx(10 * math.log10(1 / c**2), abs=1e-3)  # 20 dB
    assert p["psnr_bg"] == pytest.approx(10 * math.log10(1 / (f_bg * c**2)), abs=1e-3)  # PIE-Bench
    m = run(mse, src, edit, mask=mask)[0]
    # PIE-Bench: both images masked, mean over all values -> f_bg·c², and psnr_bg = -10·log10(mse_bg)
    assert m["mse"] == pytest.approx(c**2, rel=1e-5) and m["mse_bg"] == pytest.approx(f_bg * c**2, rel=1e-5)
    assert p["psnr_bg"] == pytest.approx(-10 * math.log10(m["mse_bg"]), abs=1e-3)
    m = run(METRICS.build({"name": "mse", "bg_mean": "background"}), src, edit, mask=mask)[0]
    assert m["mse_bg"] == pytest.approx(c**2, rel=1e-5)  # our variant: mean over background values
    # SSIM of two constant images: (2ab + C1) / (a² + b² + C1), C1 = (0.01·1)²
    a, b, c1 = 0.5, 0.5 + c, 0.01**2
    s = run(ssim, src, edit)[0]
    assert s["ssim"] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-4)
    # identical images: capped PSNR, SSIM 1, MSE 0
    assert run(psnr, src, src)[0]["psnr"] == 100.0
    assert run(METRICS.build({"name": "psnr", "max_db": 60.0}), src, src)[0]["psnr"] == 60.0
    assert run(ssim, src, src)[0]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert run(mse, src, src)[0]["mse"] == 0.0


def test_pixel_background_by_hand():
    """A 4×4 image whose top-left 2×2 block is the edited region (f_bg = 12/16); the edit moves
    background pixels by d_bg and edited pixels by d_m (in [0, 1] units), channel by channel.
    PIE-Bench (evaluate.py + torchmetrics) multiplies both images by (1 - mask) and averages over
    all 3·16 values: mse_bg = (12·3·d_bg²) / 48 = 0.75·d_bg², psnr_bg = 10·log10(1 / mse_bg)."""
    d_bg, d_m = 0.2, 0.5
    src = torch.zeros(1, 3, 4, 4)  # 0.5 grey in [0, 1]
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    edit = src + 2 * torch.where(mask.bool(), torch.tensor(d_m), torch.tensor(d_bg)).expand(1, 3, 4, 4)
    mse = run(METRICS.build("mse"), src, edit, mask=mask)[0]
    assert mse["mse"] == pytest.approx((12 * d_bg**2 + 4 * d_m**2) / 16, rel=1e-5)  # 0.0925
    assert mse["mse_bg"] == pytest.approx(0.03, rel=1e-5)  # 0.75 · 0.04
    psnr = run(METRICS.build("psnr"), src, edit, mask=mask)[0]
    assert psnr["psnr_bg"] == pytest.approx(10 * math.log10(1 / 0.03), abs=1e-4)  # 15.229 dB
    ours = run(METRICS.build({"name": "mse", "bg_mean": "background"}), src, edit, mask=mask)[0]
    assert ours["mse_bg"] == pytest.approx(0.04, rel=1e-5)
    with pytest.raises(ConfigError, match="bg_mean.*image, background"):
        METRICS.build({"name": "mse", "bg_mean": "pixels"})


def test_pixel_noise_order_symmetry_and_background(image):
    edits = torch.cat([noisy(image, 0.05), noisy(image, 0.2), noisy(image, 0.6)])
    mask = centre_mask(64, 16, 48)
    for name, sign in (("psnr", -1), ("ssim", -1), ("mse", 1)):
        metric = METRICS.build(name)
        vals = col(run(metric, image, edits), name)
        assert all(sign * (y - x) > 0 for x, y in zip(vals, vals[1:])), (name, vals)
        assert run(metric, edits[1:2], image)[0][name] == pytest.approx(vals[1], rel=1e-5)  # symmetric
        a, b = run(metric, image, torch.cat([edits[1:2], inside(edits[1:2], mask)]), mask=mask)
        assert a[f"{name}_bg"] == pytest.approx(b[f"{name}_bg"], rel=1e-6), name
        assert a[name] != pytest.approx(b[name], rel=1e-3), name
        assert run(metric, image, edits[:1])[0][f"{name}_bg"] is None


def test_pixel_mask_shapes_and_errors(image):
    mse = METRICS.build("mse")
    edit = noisy(image, 0.2)
    small = centre_mask(16, 4, 12)  # a lower-resolution mask is resized (nearest)
    big = centre_mask(64, 16, 48)
    assert run(mse, image, edit, mask=small)[0]["mse_bg"] == pytest.approx(
        run(mse, image, edit, mask=big[0, 0])[0]["mse_bg"], rel=1e-6
    )
    with pytest.raises(InputError, match="same height and width"):
        run(mse, image, torch.zeros(1, 3, 32, 32))
    with pytest.raises(InputError, match="2 edits but 1 target"):
        mse.compute(MetricInput(image, torch.cat([image, image]), "s", ["t"]))


# ----------------------------------------------------------------------- structure_distance
@pytest.fixture(scope="module")
def structure_metric(standins):
    m = METRICS.build({"name": "structure_distance", "model": str(standins["dino"]), "resolution": 32})
    m.setup("cpu")
    return m


def test_structure_distance_properties(structure_metric, image):
    edits = torch.cat([image, noisy(image, 0.05), noisy(image, 0.3), noisy(image, 1.0)])
    d = col(run(structure_metric, image, edits), "structure_distance")
    assert d[0] == pytest.approx(0.0, abs=1e-10)
    assert 0 < d[1] < d[2] < d[3], d
    assert run(structure_metric, edits[2:3], image)[0]["structure_distance"] == pytest.approx(d[2], rel=1e-5)


def test_structure_distance_uses_last_layer_keys(structure_metric, image):
    """The hooked keys equal k_proj(layernorm_before(h)) of the last layer, computed by hand."""
    from plugins.metrics.structure_distance import IMAGENET_MEAN, IMAGENET_STD, last_key_projection

    model = structure_metric.model
    x = torch.nn.functional.interpolate((image + 1) / 2, size=(32, 32), mode="bilinear", antialias=True)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    last = model.layers[-1] if hasattr(model, "layers") else model.encoder.layer[-1]
    manual = last_key_projection(model)(last.layernorm_before(hidden[-2]))
    keys = structure_metric.keys(image)
    assert keys.shape == (1, 1 + 16, 32)  # CLS + 4×4 patches, hidden 32
    assert torch.allclose(keys, manual, atol=1e-5)
    # a resolution other than the model's own interpolates the position embeddings
    other = METRICS.build({"name": "structure_distance", "model": structure_metric.options.model, "resolution": 48})
    other.setup("cpu")
    assert other.keys(image).shape == (1, 1 + 36, 32)


def test_structure_distance_pie_bench_convention(structure_metric, image):
    """PIE-Bench feeds 8-bit values (0-255, not divided by 255) through ImageNet normalisation."""
    from plugins.metrics.structure_distance import IMAGENET_MEAN, IMAGENET_STD, last_key_projection

    pie = METRICS.build(
        {"name": "structure_distance", "model": structure_metric.options.model, "resolution": 32,
         "convention": "pie_bench"}
    )
    pie.setup("cpu")
    model = pie.model
    x = torch.round((image + 1) / 2 * 255)  # what PIL gives for the saved image
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert x.abs().max() > 100  # inputs far outside ImageNet's range, as in PIE-Bench
    hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    last = model.layers[-1] if hasattr(model, "layers") else model.encoder.layer[-1]
    manual = last_key_projection(model)(last.layernorm_before(hidden[-2]))
    assert torch.allclose(pie.keys(image), manual, atol=1e-4)
    edit = noisy(image, 0.3)
    a = run(structure_metric, image, edit)[0]["structure_distance"]
    b = run(pie, image, edit)[0]["structure_distance"]
    assert a != pytest.approx(b, rel=1e-2)  # the two conventions are different numbers
    with pytest.raises(ConfigError, match="convention.*standard, pie_bench"):
        METRICS.build({"name": "structure_distance", "convention": "0-255"})


def test_pie_bench_metric_set(standins, image):
    """PIE-Bench's columns, scales and 8-bit quantisation, each value from the metric it names."""
    from plugins.metrics.pie_bench import COLUMNS, quantise

    squeeze = build_lpips_weights(standins["lpips"].parent, net="squeeze")
    m = METRICS.build(
        {"name": "pie_bench", "dino_model": str(standins["dino"]), "dino_resolution": 32,
         "clip_model": str(standins["clip"]), "lpips_weights": str(squeeze)}
    )
    m.setup("cpu")
    assert m.parts["lpips"].options.net == "squeeze"
    edits = torch.cat([noisy(image, 0.1), noisy(image, 0.4)])
    mask = centre_mask(64, 16, 48)
    rows = run(m, image, edits, mask=mask)
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 2
    q_src, q_edits = quantise(image), quantise(edits)
    assert torch.equal(quantise(q_src), q_src)  # an 8-bit image is its own round trip
    # MSE ×10⁴ of the masked, quantised images, by hand
    bg = 1 - mask
    a, b = (q_src + 1) / 2 * bg, (q_edits + 1) / 2 * bg
    by_hand = ((a - b) ** 2).mean(dim=(1, 2, 3)) * 1e4
    assert col(rows, "mse_unedit_part_x1e4") == pytest.approx(by_hand.tolist(), rel=1e-5)
    assert col(rows, "ssim_unedit_part_x1e2") == pytest.approx(
        [100 * v for v in col(run(METRICS.build("ssim"), q_src, q_edits, mask=mask), "ssim_bg")], rel=1e-5
    )
    dino = METRICS.build({"name": "structure_distance", "model": str(standins["dino"]), "resolution": 32,
                          "convention": "pie_bench"})
    assert col(rows, "structure_distance_x1e3") == pytest.approx(
        [1e3 * v for v in col(run(dino, q_src, q_edits), "structure_distance")], rel=1e-5
    )
    lp = METRICS.build({"name": "lpips", "net": "squeeze", "weights": str(squeeze)})
    assert col(rows, "lpips_unedit_part_x1e3") == pytest.approx(
        [1e3 * v for v in col(run(lp, q_src, q_edits, mask=mask), "lpips_bg")], rel=1e-5
    )
    assert all(r["clip_similarity_target_image_edit_part"] is not None for r in rows)
    # without a mask the background and edited-part columns are empty, the whole-image ones are not
    rows = run(m, image, edits)
    assert rows[0]["psnr_unedit_part"] is None and rows[0]["clip_similarity_target_image_edit_part"] is None
    assert rows[0]["structure_distance_x1e3"] is not None and rows[0]["clip_similarity_target_image"] is not None


def test_structure_distance_missing(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"(?s)metric 'structure_distance'.*option 'model'"):
        METRICS.build({"name": "structure_distance", "model": str(tmp_path / "nope")}).setup("cpu")


# -------------------------------------------------------------------------------- diversity
def test_diversity(standins, lpips_metric, image):
    m = METRICS.build({"name": "diversity", "weights": str(standins["lpips"])})
    m.setup("cpu")
    same = image.expand(3, -1, -1, -1)
    varied = torch.cat([noisy(image, 0.3, seed=s) for s in range(3)])
    samples = torch.stack([same, varied])  # (K=2, S=3, 3, H, W)
    rows = m.compute(MetricInput(image, samples[:, 0], "s", ["a", "b"], samples=samples))
    assert rows[0]["diversity"] == pytest.approx(0.0, abs=1e-7)
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = np.mean([run(lpips_metric, varied[i : i + 1], varied[j : j + 1])[0]["lpips"] for i, j in pairs])
    assert rows[1]["diversity"] == pytest.approx(expected, rel=1e-5) and rows[1]["diversity"] > 0
    one = m.compute(MetricInput(image, samples[:, 0], "s", ["a", "b"], samples=samples[:, :1]))
    assert one == [{"diversity": None}] * 2
    with pytest.raises(InputError, match="samples"):
        m.compute(MetricInput(image, samples[:, 0], "s", ["a", "b"]))


# --------------------------------------------------------------------------- reconstruction
def test_reconstruction_psnr(image):
    m = METRICS.build("reconstruction")
    edits = torch.cat([image, image])
    exact = m.compute(MetricInput(image, edits, "s", ["a", "b"], reconstruction=image.clone()))
    assert exact == [{"reconstruction_psnr": 100.0}] * 2
    vals = [
        m.compute(MetricInput(image, edits, "s", ["a", "b"], reconstruction=noisy(image, lvl)))[0][
            "reconstruction_psnr"
        ]
        for lvl in (0.01, 0.1, 0.5)
    ]
    assert vals[0] > vals[1] > vals[2], vals
    grey = torch.zeros(1, 3, 8, 8)
    shifted = m.compute(MetricInput(grey, grey, "s", ["a"], reconstruction=grey + 0.02))[0]
    assert shifted["reconstruction_psnr"] == pytest.approx(10 * math.log10(1 / 0.01**2), abs=1e-3)
    with pytest.raises(InputError, match="reconstruction"):
        m.compute(MetricInput(image, edits, "s", ["a", "b"]))


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    """Without a cache and with the hub/download host unreachable: an immediate clear error."""
    import plugins.metrics.common as common
    import plugins.metrics.lpips_distance as lpd

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(common, "reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(lpd, "reachable", lambda url, timeout=3.0: False)
    with pytest.raises(
        WeightsNotFoundError, match=r"(?s)'facebook/dino-vitb8' is not in the local .*cannot be reached"
    ):
        METRICS.build("structure_distance").setup("cpu")
    with pytest.raises(WeightsNotFoundError, match=r"(?s)metric 'diversity'.*unreachable.*option 'weights'"):
        METRICS.build("diversity").setup("cpu")


# ------------------------------------------------------------- real weights (skipped if absent)
def _trunk_cached(net: str) -> bool:
    import torchvision.models as tvm

    from plugins.metrics.lpips_distance import TRUNKS

    url = getattr(tvm, TRUNKS[net]).IMAGENET1K_V1.url
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).exists()


@pytest.mark.weights
@pytest.mark.skipif(not _trunk_cached("alex"), reason="torchvision's ImageNet AlexNet is not cached")
def test_lpips_real_weights_match_torchmetrics(image):
    from torchmetrics.functional.image import learned_perceptual_image_patch_similarity as tm_lpips

    m = METRICS.build({"name": "lpips", "local_files_only": True})
    m.setup("cpu")
    edit = noisy(image, 0.3)
    ref = float(tm_lpips(edit, image, net_type="alex", reduction="mean"))
    assert run(m, image, edit)[0]["lpips"] == pytest.approx(ref, rel=1e-4)


def _hub_cached(repo: str) -> bool:
    from plugins.metrics.common import hub_cached

    return hub_cached(repo)


@pytest.mark.weights
@pytest.mark.skipif(not _hub_cached("openai/clip-vit-large-patch14"), reason="CLIP ViT-L/14 is not cached")
def test_clip_score_real_weights_prefers_matching_prompt(image):
    m = METRICS.build({"name": "clip_score", "local_files_only": True})
    m.setup("cpu")
    rows = run(m, image, torch.cat([image, image]), ["a photo of a flower", "a photo of a truck"])
    assert rows[0]["clip_score"] > rows[1]["clip_score"]
