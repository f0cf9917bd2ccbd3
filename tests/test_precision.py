"""Half precision end to end (networks in float16/bfloat16, arithmetic in float32), the
NaN/black-image checks, and the full-size random ``sd14_random`` backbone (slow)."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from framework.backbone import PrecisionError, load_backbone
from framework.registry import EDITORS, INVERTERS


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_runs_without_nan_and_keeps_float32_maps(photo_path, dtype) -> None:
    from framework.images import load_image_tensor

    half = load_backbone("tiny", device="cpu", dtype=dtype)
    want = getattr(torch, dtype)
    assert {p.dtype for m in (half.unet, half.vae, half.text_encoder) for p in m.parameters()} == {want}
    x0 = half.encode_image(load_image_tensor(photo_path, half.resolution, half.size_multiple))
    assert x0.dtype == torch.float32 and torch.isfinite(x0).all()
    assert half.encode_prompt(["a cat"]).dtype == torch.float32
    for batch in (1, 4):  # sequential and batched inversion (float16 convolutions are slow on a CPU)
        inv = INVERTERS.build({"name": "ddpm_edit_friendly", "timestep_batch": batch}).invert(
            half, x0, "a photo of a cat", num_steps=5, skip=1)
        assert inv.zs.dtype == torch.float32 and inv.xts.dtype == torch.float32
        assert torch.isfinite(inv.zs).all() and torch.isfinite(inv.xts).all()
        out = EDITORS.build({"name": "text"}).edit(half, inv, "a photo of a cat", ["a photo of a dog"], skip=1)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        image = half.decode(out)
        assert image.dtype == torch.float32 and torch.isfinite(image).all() and image.std() > 0


def test_vae_dtype_float32_beside_a_half_unet() -> None:
    bb = load_backbone({"name": "tiny", "dtype": "bfloat16", "vae_dtype": "float32"}, device="cpu")
    assert next(bb.unet.parameters()).dtype == torch.bfloat16
    assert next(bb.vae.parameters()).dtype == torch.float32
    assert bb.describe()["vae_dtype"] == "float32" and bb.describe()["dtype"] == "bfloat16"
    image = bb.decode(torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert image.dtype == torch.float32 and torch.isfinite(image).all()


def test_nan_latents_and_black_half_decodes_raise_clear_errors(monkeypatch) -> None:
    half = load_backbone("tiny", device="cpu", dtype="float16")
    bad = torch.zeros(1, 4, 16, 16)
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(PrecisionError, match=r"latents to decode.*backbone\.dtype=float16.*float32 or bfloat16"):
        half.decode(bad)

    class Black:  # what a float16 VAE that overflows decodes to, once clamped
        def __init__(self, x: torch.Tensor) -> None:
            self.sample = -torch.ones(x.shape[0], 3, 32, 32, dtype=x.dtype)

    monkeypatch.setattr(half.vae, "decode", lambda x: Black(x))
    with pytest.raises(PrecisionError, match=r"all black.*backbone\.vae_dtype=float32"):
        half.decode(torch.zeros(2, 4, 16, 16))
    monkeypatch.setattr(
        half.vae, "decode", lambda x: type("Out", (), {"sample": torch.full((1, 3, 32, 32), float("inf"))})()
    )
    with pytest.raises(PrecisionError, match=r"decoded image has NaN/inf with backbone\.vae_dtype=float16"):
        half.decode(torch.zeros(1, 4, 16, 16))


def test_black_float32_decode_only_warns(tiny, monkeypatch) -> None:
    class Black:
        sample = -torch.ones(1, 3, 32, 32)

    monkeypatch.setattr(tiny.vae, "decode", lambda x: Black())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = tiny.decode(torch.zeros(1, 4, 16, 16))
    assert any("all black" in str(w.message) for w in caught) and (image == -1).all()


def test_nan_noise_maps_raise_in_half_precision(monkeypatch) -> None:
    half = load_backbone("tiny", device="cpu", dtype="bfloat16")
    monkeypatch.setattr(half, "model_output", lambda x, t, c: torch.full_like(x, float("nan")))
    with pytest.raises(PrecisionError, match=r"noise maps has NaN/inf with backbone\.dtype=bfloat16"):
        INVERTERS.build("ddpm_edit_friendly").invert(half, torch.zeros(1, 4, 16, 16), "a cat", num_steps=4)


@pytest.mark.slow
def test_sd14_random_has_sd14_sizes_and_runs() -> None:
    """Builds the full-size random SD 1.4 once (bfloat16 to halve the memory), then frees it."""
    from plugins.backbones.sd14_random import SD14_PARAMETERS

    bb = load_backbone("sd14_random", device="cpu", dtype="bfloat16")
    try:
        counts = bb.parameter_counts()
        assert counts == SD14_PARAMETERS
        assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
        assert 859e6 < counts["unet"] < 860e6
        assert (bb.resolution, bb.size_multiple, bb.max_tokens) == (512, 64, 77)
        assert bb.unet.config.cross_attention_dim == bb.text_encoder.config.hidden_size == 768
        assert bb.describe()["random_weights"] is True
        # the timesteps are SD's: leading spacing with steps_offset 1
        assert bb.timesteps(100)[:3].tolist() == [1, 11, 21]
        # one guided network evaluation on a 64x64 image (8x8 latents) is finite
        x0 = bb.encode_image(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
        eps = bb.predict_noise(x0, 501, bb.encode_prompt(["a cat"]), bb.null_condition(), 3.5)
        assert eps.shape == (1, 4, 8, 8) and eps.dtype == torch.float32 and torch.isfinite(eps).all()
        # the same seed builds the same weights
        assert bb.build_seconds > 0
    finally:
        del bb
        gc.collect()
