"""The pixel-space DDPM backbone (``pixel_ddpm``) and its tiny offline variant (``tiny_pixel``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from framework.backbone import load_backbone
from framework.errors import InputError, WeightsNotFoundError
from framework.random import make_generator
from framework.registry import BACKBONES, INVERTERS
from framework.sampling import reverse_process


def test_tiny_pixel_is_a_saved_diffusers_folder_loaded_by_pixel_ddpm(tiny_pixel):
    from plugins.backbones.pixel_ddpm import PixelDDPMBackbone

    folder = tiny_pixel.options.model
    index = json.loads((Path(folder) / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert isinstance(tiny_pixel, PixelDDPMBackbone)
    assert tiny_pixel.conditional is False and tiny_pixel.pixel_space
    assert tiny_pixel.resolution == 16 and tiny_pixel.size_multiple == 2
    # the same folder through the generic loaders: a path routes to pixel_ddpm
    again = load_backbone(folder, device="cpu")
    assert type(again) is PixelDDPMBackbone
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(again.model_output(x, 10, None), tiny_pixel.model_output(x, 10, None))


def test_schedule_and_timesteps_follow_the_sd_convention(tiny_pixel):
    from diffusers import DDPMScheduler

    ts = tiny_pixel.timesteps(20)
    assert ts.tolist() == list(range(1, 1000, 50))  # leading spacing, steps_offset 1, paper order
    ref = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear").alphas_cumprod
    assert torch.allclose(tiny_pixel.alphas_cumprod, ref)
    assert tiny_pixel.final_alpha_cumprod == pytest.approx(float(ref[0]))
    assert (tiny_pixel.schedule(20, 1.0).sigma > 0).all()  # σ_1 > 0: exact inversion possible
    with pytest.raises(InputError, match="num_steps"):
        tiny_pixel.timesteps(0)


def test_identity_encode_decode_and_prompts_ignored(tiny_pixel):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    x0 = tiny_pixel.encode_image(images)
    assert torch.equal(x0, images)
    assert torch.equal(tiny_pixel.decode(x0), images)
    assert torch.equal(tiny_pixel.decode(x0 * 3), (x0 * 3).clamp(-1, 1))
    assert tiny_pixel.encode_prompt(["a dog"]) is None and tiny_pixel.null_condition() is None
    with pytest.raises(InputError, match="multiple of 2"):
        tiny_pixel.encode_image(torch.zeros(1, 3, 15, 16))
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        tiny_pixel.encode_image(torch.zeros(1, 4, 16, 16))
    # guidance is ignored: one forward pass, same result whatever the scale
    x = torch.randn(1, 3, 16, 16)
    n0 = tiny_pixel.nfe
    e1 = tiny_pixel.predict_noise(x, 101, None, None, 7.5)
    assert tiny_pixel.nfe == n0 + 1
    assert torch.equal(e1, tiny_pixel.predict_noise(x, 101, None, None, 1.0))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_edit_friendly_inversion_is_exact(prediction_type, tiny_pixel, photo_path):
    from framework.images import load_image_tensor

    backbone = tiny_pixel if prediction_type == "epsilon" else load_backbone(
        {"name": "tiny_pixel", "prediction_type": prediction_type}, device="cpu"
    )
    assert backbone.prediction_type == prediction_type
    x0 = backbone.encode_image(load_image_tensor(photo_path, 16, 2))
    inv = INVERTERS.build({"name": "ddpm_edit_friendly"}).invert(
        backbone, x0, "", num_steps=20, generator=make_generator(0)
    )
    schedule = backbone.schedule(20, inv.eta)
    out = reverse_process(backbone, inv.xts[-1], schedule, 20, None, None, 3.5, zs=inv.zs)
    assert (out - x0).abs().max().item() <= 1e-4


def test_to_epsilon_conversions_are_consistent(tiny_pixel):
    """v and sample predictions of the true noise give the true noise back."""
    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    eps = torch.randn_like(x0)
    t = 301
    a = tiny_pixel.alphas_cumprod[t]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    b = load_backbone({"name": "tiny_pixel", "prediction_type": "v_prediction"}, device="cpu")
    torch.testing.assert_close(b.to_epsilon(v, x_t, t), eps, rtol=1e-4, atol=1e-4)
    b.prediction_type = "sample"
    torch.testing.assert_close(b.to_epsilon(x0, x_t, t), eps, rtol=1e-4, atol=1e-4)


def test_single_folder_layout_and_gray_models(tmp_path):
    """Old hub layout (config + weights + scheduler_config at the root) and a 1-channel model."""
    from plugins.backbones.pixel_ddpm import build_pixel_unet, ddpm_scheduler

    torch.manual_seed(0)
    build_pixel_unet(8, channels=1, width=8).save_pretrained(tmp_path)
    ddpm_scheduler().save_pretrained(tmp_path)
    b = BACKBONES.build({"name": "pixel_ddpm", "model": str(tmp_path), "device": "cpu", "local_files_only": True})
    assert b.channels == 1 and b.resolution == 8
    images = torch.rand(1, 3, 8, 8) * 2 - 1
    x0 = b.encode_image(images)
    assert x0.shape == (1, 1, 8, 8) and torch.allclose(x0, images.mean(1, keepdim=True))
    assert b.decode(x0).shape == (1, 3, 8, 8)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="tiny_pixel"):
        BACKBONES.build(
            {"name": "pixel_ddpm", "model": str(tmp_path / "nothing"), "device": "cpu", "local_files_only": True}
        )


def test_cli_edits_with_pixel_backbone_and_rejects_text_editor(tiny_pixel, photo_path, tmp_path, capsys):
    from framework.cli import main

    out = tmp_path / "out"
    rc = main([
        "edit", "--image", str(photo_path), "--source", "", "--target", "", "--backbone", "tiny_pixel",
        "--steps", "10", "--skip", "2", "--out", str(out), "--no-progress", "editor=shift", "editor.dx=2",
    ])
    assert rc == 0
    assert len(list(out.glob("flower_00_*.png"))) == 1
    rc = main([
        "edit", "--image", str(photo_path), "--source", "", "--target", "a dog", "--backbone", "tiny_pixel",
        "--steps", "10", "--skip", "2", "--out", str(out), "--no-progress",
    ])
    assert rc == 2
    assert "unconditional" in capsys.readouterr().err
