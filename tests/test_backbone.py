"""Backbone behaviour: prediction-type conversion, guidance batching, half precision, loading."""

from __future__ import annotations

import pytest
import torch

from framework.backbone import load_backbone
from framework.errors import InputError


def test_v_and_sample_predictions_convert_to_epsilon(tiny_v) -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = 401
    a = tiny_v.alphas_cumprod[t]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(tiny_v.to_epsilon(v, x_t, t), eps, atol=1e-5, rtol=1e-5)
    old = tiny_v.prediction_type
    try:
        tiny_v.prediction_type = "sample"
        torch.testing.assert_close(tiny_v.to_epsilon(x0, x_t, t), eps, atol=1e-4, rtol=1e-4)
    finally:
        tiny_v.prediction_type = old


def test_guidance_is_one_batched_pass_and_matches_two_passes(tiny) -> None:
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = tiny.encode_prompt(["a cat", "a dog", "a tree"])
    uncond = tiny.null_condition()
    n0 = tiny.nfe
    guided = tiny.predict_noise(x, 501, cond, uncond, 7.5)
    assert tiny.nfe - n0 == 1
    eps_c = tiny.predict_noise(x, 501, cond)
    eps_u = tiny.predict_noise(x, 501, uncond)
    torch.testing.assert_close(guided, eps_u + 7.5 * (eps_c - eps_u), atol=1e-5, rtol=1e-4)
    per_row = tiny.predict_noise(x, 501, cond, uncond, torch.tensor([1.0, 7.5, 3.0]))
    torch.testing.assert_close(per_row[1], guided[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(per_row[0], eps_c[0], atol=1e-5, rtol=1e-4)


def test_conditional_branch_at_its_own_latent_is_one_pass(tiny) -> None:
    """``x_cond``: the conditional branch sees another latent, still one network evaluation."""
    g = torch.Generator().manual_seed(2)
    x, x_c = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    cond, uncond = tiny.encode_prompt(["a cat", "a dog"]), tiny.null_condition()
    n0 = tiny.nfe
    guided = tiny.predict_noise(x, 301, cond, uncond, 5.0, x_cond=x_c)
    assert tiny.nfe - n0 == 1
    eps_u, eps_c = tiny.predict_noise(x, 301, uncond), tiny.predict_noise(x_c, 301, cond)
    torch.testing.assert_close(guided, eps_u + 5.0 * (eps_c - eps_u), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tiny.predict_noise(x, 301, cond, x_cond=x_c), eps_c)


def test_half_precision_networks_keep_float32_arithmetic(tmp_path) -> None:
    from framework.registry import EDITORS, INVERTERS

    bf16 = load_backbone("tiny", device="cpu", dtype="bfloat16")
    assert next(bf16.unet.parameters()).dtype == torch.bfloat16
    x0 = bf16.encode_image(torch.zeros(1, 3, 32, 32))
    assert x0.dtype == torch.float32
    inv = INVERTERS.build("ddpm_edit_friendly").invert(bf16, x0, "a cat", num_steps=8, skip=2)
    assert inv.zs.dtype == torch.float32 and inv.xts.dtype == torch.float32
    out = EDITORS.build({"name": "text", "guidance_scale": 3.5}).edit(bf16, inv, "a cat", ["a cat"], skip=2)
    # the network is deterministic, so reconstruction stays exact in bf16 too
    assert (out - inv.xts[0]).abs().max() <= 1e-4


def test_tiny_is_deterministic_from_its_seed(tmp_path) -> None:
    a = load_backbone({"name": "tiny", "seed": 5, "cache_dir": str(tmp_path / "a")}, device="cpu")
    b = load_backbone({"name": "tiny", "seed": 5, "cache_dir": str(tmp_path / "b")}, device="cpu")
    c = load_backbone({"name": "tiny", "seed": 6, "cache_dir": str(tmp_path / "a")}, device="cpu")
    pa, pb, pc = (next(m.unet.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert a.tokenizer("a photo of a cat").input_ids == [a.tokenizer.bos_token_id, *a.tokenizer.convert_tokens_to_ids(
        ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]), a.tokenizer.eos_token_id]


def test_bad_shapes_and_steps(tiny) -> None:
    with pytest.raises(InputError, match="multiple of 4"):
        tiny.encode_image(torch.zeros(1, 3, 30, 30))
    with pytest.raises(InputError, match="num_steps"):
        tiny.timesteps(5000)
    # SD's steps_offset 1 with "leading" spacing would index timestep 1000 of 0..999
    with pytest.raises(InputError, match="last timestep at 1000"):
        tiny.timesteps(1000)
    assert int(tiny.timesteps(999).max()) == 999
    with pytest.raises(InputError, match="dtype"):
        load_backbone("tiny", device="cpu", dtype="float8")


def test_attention_editors_ask_the_backbone_for_tokens_and_layers(tiny, tiny_pixel) -> None:
    """Token positions, the token length and the attention network come from the backbone."""
    assert tiny.token_positions("a photo of a cat", "cat") == [5]
    assert tiny.max_prompt_tokens == tiny.max_tokens
    assert tiny.attention_network() is tiny.unet and tiny.prompt_tokenizer is tiny.tokenizer
    assert tiny_pixel.prompt_tokenizer is None
    with pytest.raises(InputError, match="no prompt tokenizer"):
        tiny_pixel.token_positions("a cat", "cat")
