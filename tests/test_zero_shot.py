"""Zero-Shot (pix2pix-zero) on the tiny backbone: exact reconstruction without an edit, the
cross-attention guidance's effect, the edit direction, hook removal, inference mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from attention_editor_helpers import FailingBackbone, ddim_inversion

from framework.config import group_node
from framework.errors import InputError
from framework.random import make_generator
from framework.registry import EDITORS, INVERTERS
from plugins.editors.unet_hooks import hook_state

N = 10
SKIP = 2
SOURCE = "a photo of a cat"
TARGETS = ["a photo of a dog", "a painting of a tiger"]
G_INV = 3.5


def zero_shot(**opts):  # noqa: ANN003, ANN201
    return EDITORS.build({"name": "zero_shot", **opts})


@pytest.fixture(scope="module")
def ef_inversion(tiny, photo_x0):  # noqa: ANN001, ANN201
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": G_INV})
    return inverter.invert(tiny, photo_x0, SOURCE, num_steps=N, skip=0, generator=make_generator(5))


def zero_direction(tiny) -> torch.Tensor:  # noqa: ANN001
    emb = tiny.encode_prompt([SOURCE])
    return torch.zeros_like(emb)


def test_no_guidance_zero_direction_reproduces_source(tiny, ef_inversion):  # noqa: ANN001
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


def test_guidance_updates_latent_and_lowers_attention_distance(tiny, ef_inversion):  # noqa: ANN001
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


def test_text_editor_equivalence_without_guidance(tiny, ef_inversion, photo_x0):  # noqa: ANN001
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


def test_direction_from_sentence_files(tiny, tmp_path: Path):  # noqa: ANN001
    cats = ["a photo of a cat", "a cat sitting on grass", "a drawing of a cat"]
    dogs = ["a photo of a dog", "a dog running on the beach"]
    (tmp_path / "cat.txt").write_text("\n".join(cats) + "\n\n")
    (tmp_path / "dog.txt").write_text("\n".join(dogs))
    (tmp_path / "tiger.txt").write_text("a tiger\n")
    editor = zero_shot(source_sentences=str(tmp_path / "cat.txt"), target_sentences=str(tmp_path / "dog.txt"))
    d = editor.directions(tiny, SOURCE, TARGETS)
    expected = tiny.encode_prompt(dogs).mean(0) - tiny.encode_prompt(cats).mean(0)
    assert d.shape == (2, 77, 32)
    assert torch.allclose(d[0], expected, atol=1e-5) and torch.allclose(d[1], expected, atol=1e-5)
    per_target = zero_shot(target_sentences=[str(tmp_path / "dog.txt"), str(tmp_path / "tiger.txt")])
    d = per_target.directions(tiny, SOURCE, TARGETS)
    assert torch.allclose(d[1], tiny.encode_prompt(["a tiger"])[0] - tiny.encode_prompt([SOURCE])[0], atol=1e-5)
    plain = zero_shot().directions(tiny, SOURCE, TARGETS)
    assert torch.allclose(plain, tiny.encode_prompt(TARGETS) - tiny.encode_prompt([SOURCE]), atol=1e-6)
    with pytest.raises(InputError, match="does not exist"):
        zero_shot(source_sentences=str(tmp_path / "missing.txt"))  # at construction


def test_hooks_removed_after_call_and_after_error(tiny, ef_inversion):  # noqa: ANN001
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


def test_works_under_inference_mode(tiny, photo_x0, ef_inversion):  # noqa: ANN001
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


def test_several_targets_batched_like_one_by_one(tiny, ef_inversion):  # noqa: ANN001
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
