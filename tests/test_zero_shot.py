"""Zero-Shot (pix2pix-zero) on the tiny backbone: exact reconstruction without an edit, the
cross-attention guidance's effect, the edit direction, hook removal, inference mode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from framework.conditioning import Conditioning
from framework.config import group_node, preset_node
from framework.errors import ConfigError, InputError
from framework.random import make_generator
from framework.registry import EDITORS, INVERTERS
from plugins.editors.unet_hooks import hook_state
from tests.helpers.attention_editors import FailingBackbone, ddim_inversion

N = 10
SKIP = 2
SOURCE = "a photo of a cat"
TARGETS = ["a photo of a dog", "a painting of a tiger"]
G_INV = 3.5


def zero_shot(**opts):
    return EDITORS.build({"name": "zero_shot", **opts})


@pytest.fixture(scope="module")
def ef_inversion(tiny, photo_x0):
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": G_INV})
    return inverter.invert(tiny, photo_x0, SOURCE, num_steps=N, skip=0, generator=make_generator(5))


def zero_direction(tiny) -> Conditioning:
    return tiny.encode_prompt([SOURCE]).map(torch.zeros_like)


def test_no_guidance_zero_direction_reproduces_source(tiny, ef_inversion):
    """With the empty negative prompt (the inversion's) and the inversion's guidance scale, a
    zero direction regenerates the inverted image."""
    editor = zero_shot(cross_attention_guidance=0.0, guidance_scale=G_INV, negative_prompt="empty")
    out = editor.run(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP, direction=zero_direction(tiny))
    assert out.latents.shape == (2, 4, 16, 16)
    assert (out.latents - ef_inversion.x0).abs().max() <= 1e-4
    # the same through edit(): the prompts' direction is zero when target = source
    latents = editor.edit(tiny, ef_inversion, SOURCE, [SOURCE], skip=SKIP)
    assert (latents - ef_inversion.x0).abs().max() <= 1e-4
    # taking the reference row from the stored trajectory changes nothing here
    inv_mode = zero_shot(
        cross_attention_guidance=0.0, guidance_scale=G_INV, source_latents="inversion", negative_prompt="empty"
    )
    latents = inv_mode.edit(tiny, ef_inversion, SOURCE, [SOURCE], skip=SKIP)
    assert (latents - ef_inversion.x0).abs().max() <= 1e-4


def test_guidance_updates_latent_and_lowers_attention_distance(tiny, ef_inversion):
    off = zero_shot(cross_attention_guidance=0.0).run(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP, measure=True)
    on = zero_shot(cross_attention_guidance=1.0).run(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP, measure=True)
    n = N - SKIP
    assert off.attention_loss.shape == (n, 2) and on.update_norm.shape == (n, 2)
    assert float(off.update_norm.abs().max()) == 0.0
    # step 1: the unconditional copy (source prompt) sits on the reference, so the kept update
    # is zero; the conditional copy (edit prompt) moves; afterwards both move
    assert float(on.update_norm[0].abs().max()) == 0.0
    assert bool((on.update_norm[1:] > 0).all()) and bool((on.cond_update_norm > 0).all())
    assert float(off.attention_loss[0].min()) > 0  # the edit's maps differ from the reference
    # step 1 is measured before any update, so it agrees; afterwards the guided edit stays closer
    assert torch.allclose(on.attention_loss[0], off.attention_loss[0], atol=1e-5)
    assert bool((on.attention_loss[1:].sum(0) < off.attention_loss[1:].sum(0)).all())
    assert (on.latents - off.latents).abs().max() > 1e-4
    # the previous variant: the conditional copy's maps only, its update kept from step 1
    cond_only = zero_shot(cross_attention_guidance=1.0, attention_guidance="conditional").run(
        tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP
    )
    assert bool((cond_only.update_norm > 0).all())
    assert torch.equal(cond_only.update_norm, cond_only.cond_update_norm)
    assert (cond_only.latents - on.latents).abs().max() > 1e-4


def test_text_editor_equivalence_without_guidance(tiny, ef_inversion, photo_x0):
    """Without sentence files and λ = 0 the edit embedding is E(target): the text editor."""
    text = EDITORS.build({"name": "text", "guidance_scale": 5.0})
    editor = zero_shot(cross_attention_guidance=0.0, guidance_scale=5.0, negative_prompt="empty")
    inversions = [ef_inversion, ddim_inversion(tiny, photo_x0, SOURCE, N, G_INV)]
    for inv in inversions:
        ref = text.edit(tiny, inv, SOURCE, TARGETS, skip=SKIP)
        out = editor.edit(tiny, inv, SOURCE, TARGETS, skip=SKIP)
        assert (out - ref).abs().max() <= 1e-4
    # and it runs with guidance on the deterministic inversion
    out = zero_shot().edit(tiny, inversions[1], SOURCE, TARGETS, skip=SKIP)
    assert torch.isfinite(out).all() and out.shape == (2, 4, 16, 16)


def test_direction_from_sentence_files(tiny, tmp_path: Path):
    cats = ["a photo of a cat", "a cat sitting on grass", "a drawing of a cat"]
    dogs = ["a photo of a dog", "a dog running on the beach"]
    (tmp_path / "cat.txt").write_text("\n".join(cats) + "\n\n")
    (tmp_path / "dog.txt").write_text("\n".join(dogs))
    (tmp_path / "tiger.txt").write_text("a tiger\n")
    editor = zero_shot(source_sentences=str(tmp_path / "cat.txt"), target_sentences=str(tmp_path / "dog.txt"))
    d = editor.directions(tiny, SOURCE, TARGETS)
    expected = tiny.encode_prompt(dogs).embeds.mean(0) - tiny.encode_prompt(cats).embeds.mean(0)
    assert isinstance(d, Conditioning) and d.embeds.shape == (2, 77, 32)
    assert torch.allclose(d.embeds[0], expected, atol=1e-5) and torch.allclose(d.embeds[1], expected, atol=1e-5)
    per_target = zero_shot(target_sentences=[str(tmp_path / "dog.txt"), str(tmp_path / "tiger.txt")])
    d = per_target.directions(tiny, SOURCE, TARGETS).embeds
    tiger, src = tiny.encode_prompt(["a tiger"]).embeds, tiny.encode_prompt([SOURCE]).embeds
    assert torch.allclose(d[1], tiger[0] - src[0], atol=1e-5)
    plain = zero_shot().directions(tiny, SOURCE, TARGETS).embeds
    assert torch.allclose(plain, tiny.encode_prompt(TARGETS).embeds - src, atol=1e-6)
    with pytest.raises(InputError, match="does not exist"):
        zero_shot(source_sentences=str(tmp_path / "missing.txt"))  # at construction


def test_hooks_removed_after_call_and_after_error(tiny, ef_inversion):
    before = hook_state(tiny.unet)
    zero_shot().edit(tiny, ef_inversion, SOURCE, TARGETS[:1], skip=SKIP)
    assert hook_state(tiny.unet) == before
    failing = FailingBackbone(tiny, fail_at=2, only_with_grad=True)  # inside the guidance pass
    with pytest.raises(RuntimeError, match="injected failure"):
        zero_shot().edit(failing, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert failing.calls == 2
    assert hook_state(tiny.unet) == before
    assert torch.is_grad_enabled()  # the caller's grad mode is restored
    with torch.no_grad():
        failing = FailingBackbone(tiny, fail_at=1, only_with_grad=True)
        with pytest.raises(RuntimeError):
            zero_shot().edit(failing, ef_inversion, SOURCE, TARGETS, skip=SKIP)
        assert not torch.is_grad_enabled()
    assert hook_state(tiny.unet) == before


def test_works_under_inference_mode(tiny, photo_x0, ef_inversion):
    """Lightning's predict loop runs under inference mode; the guidance still gets gradients."""
    editor = zero_shot(cross_attention_guidance=0.5)
    ref = editor.run(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    with torch.inference_mode():
        inv = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": G_INV}).invert(
            tiny, photo_x0, SOURCE, num_steps=N, skip=0, generator=make_generator(5)
        )
        assert inv.xts.is_inference()
        out = editor.run(tiny, inv, SOURCE, TARGETS, skip=SKIP)
        assert torch.is_inference_mode_enabled()
    assert bool((out.update_norm[1:] > 0).all()) and bool((out.cond_update_norm > 0).all())
    assert (out.latents - ref.latents).abs().max() <= 1e-4


def test_several_targets_batched_like_one_by_one(tiny, ef_inversion):
    nfe0 = tiny.nfe
    together = zero_shot().edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert tiny.nfe - nfe0 == 2 * (N - SKIP)  # guidance pass + CFG pass per step, all rows
    one_by_one = zero_shot(targets_per_batch=1).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert (together - one_by_one).abs().max() <= 1e-4


def test_presets():
    ddim = EDITORS.build(group_node("editor", "zero_shot")).options
    ef = EDITORS.build(group_node("editor", "zero_shot_ef")).options
    assert ddim.cross_attention_guidance == 0.1 and ef.cross_attention_guidance == 0.03
    assert ddim.guidance_scale == ef.guidance_scale == 5.0
    assert ddim.negative_prompt == ef.negative_prompt == "source"
    assert ddim.attention_guidance == ef.attention_guidance == "both"
    with pytest.raises(ConfigError, match="negative_prompt"):
        zero_shot(negative_prompt="blurry")._check_options(1)


# ----------------------------------------------------------------------------- against the reference
def test_source_negative_zero_direction_leaves_nothing_to_push(tiny, photo_x0, ef_inversion):
    """pix2pix-zero's negative prompt is the source caption: with a zero direction both guidance
    branches of an edit row see the source prompt at the same latent, so the guided prediction
    is the source-conditioned one, whatever the guidance scale."""
    src = tiny.encode_prompt([SOURCE]).embeds[0]
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module, args, kwargs, output):
        if not torch.is_grad_enabled():  # the prediction passes, not the guidance pass
            calls.append((kwargs["encoder_hidden_states"].detach().clone(), output[0].detach().clone()))

    handle = tiny.unet.register_forward_hook(record, with_kwargs=True)
    try:
        out = zero_shot(cross_attention_guidance=0.0).run(
            tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP, direction=zero_direction(tiny)
        )
    finally:
        handle.remove()
    assert len(calls) == N - SKIP
    k = len(TARGETS)
    for emb, eps in calls:  # rows: [uncond: ref, edits; cond: ref, edits]
        assert emb.shape[0] == 2 * (1 + k)
        for r in range(1, 1 + k):
            assert torch.equal(emb[r], src) and torch.equal(emb[1 + k + r], src)
            assert (eps[r] - eps[1 + k + r]).abs().max() <= 1e-5  # ε_u = ε_c: ε̂ = ε_c
    # so the edit is plain source-conditioned sampling (the text editor at guidance 1)
    plain = EDITORS.build({"name": "text", "guidance_scale": 1.0}).edit(tiny, ef_inversion, SOURCE, [SOURCE], skip=SKIP)
    assert (out.latents - plain).abs().max() <= 1e-4
    # with the empty negative prompt the guidance does push (the check can fail)
    empty = zero_shot(cross_attention_guidance=0.0, negative_prompt="empty").run(
        tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP, direction=zero_direction(tiny)
    )
    assert (empty.latents - plain).abs().max() > 1e-2
    # on a DDIM inversion at guidance 1 the edit rows follow the reference exactly: the
    # cross-attention guidance has nothing to pull toward either
    inv = ddim_inversion(tiny, photo_x0, SOURCE, N, 1.0)
    guided = zero_shot(cross_attention_guidance=0.1).run(
        tiny, inv, SOURCE, TARGETS[:1], skip=SKIP, direction=zero_direction(tiny)
    )
    assert float(guided.update_norm.max()) <= 1e-6 and float(guided.cond_update_norm.max()) <= 1e-6
    recon = EDITORS.build({"name": "text", "guidance_scale": 1.0}).edit(tiny, inv, SOURCE, [SOURCE], skip=SKIP)
    assert (guided.latents - recon).abs().max() <= 1e-4


def _record_reference_maps(monkeypatch, unet) -> list[torch.Tensor]:
    """Put diffusers' plain AttnProcessor on every cross-attention layer and record its
    attention probabilities, (batch·heads, queries, tokens) as pix2pix-zero's processor keeps
    them; returns the list the maps are appended to (in call order)."""
    from diffusers.models.attention_processor import AttnProcessor

    maps: list[torch.Tensor] = []
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            original = module.get_attention_scores

            def scores(query, key, attention_mask=None, original=original):
                probs = original(query, key, attention_mask)
                maps.append(probs)
                return probs

            monkeypatch.setattr(module, "processor", AttnProcessor())
            monkeypatch.setattr(module, "get_attention_scores", scores)
    return maps


def test_gradient_step_matches_pix2pix_zero(tiny, photo_x0, monkeypatch):
    """Two steps of the edit, written out as pix2pix-zero's loop computes them (reference maps
    from the reconstruction at the source prompt for both copies; loss Σ_layers
    ((M - M_ref)²).sum(queries, tokens).mean(batch·heads) over the two copies; SGD with lr λ;
    the noise recomputed from the updated copies; the step from the unconditional copy)."""
    lam, w, n_steps = 5.0, 5.0, 2
    inv = ddim_inversion(tiny, photo_x0, SOURCE, N, 1.0)
    src = tiny.encode_prompt([SOURCE])
    direction = tiny.encode_prompt(TARGETS[:1]).embeds - src.embeds  # a tensor: the direction of embeds
    ours = zero_shot(cross_attention_guidance=lam, guidance_scale=w).run(
        tiny, inv, SOURCE, TARGETS[:1], skip=N - n_steps, direction=direction
    )
    maps = _record_reference_maps(monkeypatch, tiny.unet)
    schedule = tiny.schedule(N, 0.0)

    def ddim_step(x, eps, i):
        a, a_prev = float(schedule.abar[i - 1]), float(schedule.abar_prev[i - 1])
        return a_prev**0.5 * (x - (1 - a) ** 0.5 * eps) / a**0.5 + (1 - a_prev) ** 0.5 * eps

    ref = inv.xts[n_steps].clone()
    x = ref.clone()
    kept_updates = []
    embeds = Conditioning(torch.cat([src.embeds, src.embeds + direction]))  # [negative = source caption, caption + Δ]
    for i in range(n_steps, 0, -1):
        t = int(schedule.timesteps[i - 1])
        with torch.no_grad():
            maps.clear()
            eps_ref = tiny.model_output(ref, t, src)  # the reconstruction (guidance 1)
            ref_maps = [m.repeat(2, 1, 1) for m in maps]  # both copies: the caption's maps
        x_in = torch.cat([x, x]).requires_grad_(True)
        maps.clear()
        tiny.model_output(x_in, t, embeds)
        loss = sum(((m - r) ** 2).sum((1, 2)).mean(0) for m, r in zip(maps, ref_maps))
        (grad,) = torch.autograd.grad(loss, x_in)
        x_in = (x_in - lam * grad).detach()
        kept_updates.append(float((lam * grad[0]).norm()))
        with torch.no_grad():
            e_u, e_c = tiny.model_output(x_in, t, embeds).chunk(2)
        x = ddim_step(x_in[:1], e_u + w * (e_c - e_u), i)
        ref = ddim_step(ref, eps_ref, i)
    # the first step moves only the conditional copy (the other sits on the reference)
    assert kept_updates[0] <= 1e-5 and kept_updates[1] > 1e-3
    assert ours.update_norm[:, 0].tolist() == pytest.approx(kept_updates, abs=1e-5, rel=1e-3)
    assert (ours.latents - x).abs().max() <= 1e-4
    # the conditional-rows variant (mean over heads of one copy) is a different step
    other = zero_shot(cross_attention_guidance=lam, guidance_scale=w, attention_guidance="conditional").run(
        tiny, inv, SOURCE, TARGETS[:1], skip=N - n_steps, direction=direction
    )
    assert (other.latents - x).abs().max() > 1e-3


# ----------------------------------------------------------------------------- the regularised DDIM inversion
def test_noise_regularizer_losses_by_hand():
    from plugins.inverters.ddim import NoiseRegularization, autocorrelation_loss, kl_loss, regularize_noise

    gen = torch.Generator().manual_seed(3)
    c = 0.5
    const = torch.full((1, 4, 16, 16), c)
    # every roll of a constant map is itself: mean(n·roll(n))² = c⁴, two directions, two
    # pyramid levels (16, 8), four channels
    assert float(autocorrelation_loss(const, gen)) == pytest.approx(4 * 2 * 2 * c**4, rel=1e-6)
    # columns alternating ±1: rolls along the height keep the map (+1), rolls along the width
    # give ±1 (squared: 1); the 2×2-pooled level is zero
    cols = torch.tensor([1.0, -1.0]).repeat(8).expand(1, 4, 16, 16).clone()
    assert float(autocorrelation_loss(cols, gen)) == pytest.approx(4 * 2.0, rel=1e-6)
    n = cols.numel()
    assert float(kl_loss(const)) == pytest.approx(c**2 - 1 - math.log(1e-7), rel=1e-6)
    var = n / (n - 1)  # unbiased variance of ±1 with mean 0
    assert float(kl_loss(cols)) == pytest.approx(var - 1 - math.log(var + 1e-7), abs=1e-6)
    # one KL step by hand: d/de_j = (1 - 1/(var+δ))·2(e_j - μ)/(n-1) + 2μ/n
    e = torch.randn(1, 4, 16, 16, generator=gen) * 0.7 + 0.2
    mu, v = e.mean(), e.var()
    grad = (1 - 1 / (v + 1e-7)) * 2 * (e - mu) / (e.numel() - 1) + 2 * mu / e.numel()
    out = regularize_noise(e, NoiseRegularization(0.0, 20.0, 1, 5), gen)
    assert (out - (e - 20.0 * grad)).abs().max() <= 1e-5
    # white noise: its auto-correlation is far below a correlated map's
    white = torch.randn(1, 4, 16, 16, generator=gen)
    assert float(autocorrelation_loss(white, gen)) < 0.05 * float(autocorrelation_loss(cols, gen))


def test_regularized_ddim_inversion(tiny, photo_x0):
    plain = INVERTERS.build({"name": "ddim"}).invert(tiny, photo_x0, SOURCE, num_steps=N)
    helper = ddim_inversion(tiny, photo_x0, SOURCE, N, 1.0)
    zero = INVERTERS.build({"name": "ddim", "autocorrelation_weight": 0.0, "kl_weight": 0.0}).invert(
        tiny, photo_x0, SOURCE, num_steps=N
    )
    assert torch.equal(zero.xts, plain.xts) and torch.equal(plain.xts, helper.xts)
    preset = INVERTERS.build(group_node("inverter", "ddim_pix2pix_zero"))
    o = preset.options
    assert (o.autocorrelation_weight, o.kl_weight, o.regularization_steps, o.autocorrelation_rolls) == (20, 20, 5, 5)
    assert o.guidance_scale == 1.0
    assert preset_node("inverter", "ddim_pix2pix_zero")["settings"] == {"num_steps": 50, "skip": 0}
    reg = preset.invert(tiny, photo_x0, SOURCE, num_steps=N, generator=make_generator(0))
    again = preset.invert(tiny, photo_x0, SOURCE, num_steps=N, generator=make_generator(0))
    assert torch.equal(reg.xts, again.xts)  # the random shifts come from the generator
    assert reg.nfe == plain.nfe == N
    assert (reg.xts[-1] - plain.xts[-1]).abs().max() > 1e-3
