"""Plug-and-Play on the tiny backbone: identities with the text editor, exact source
reconstruction, the injection's effect, hook removal, inference mode, several targets."""

from __future__ import annotations

import pytest
import torch
from attention_editor_helpers import FailingBackbone, ddim_inversion

from framework.config import group_node
from framework.errors import ConfigError, InputError
from framework.random import make_generator
from framework.registry import EDITORS, INVERTERS
from plugins.editors.unet_hooks import hook_state, resolve_layers

N = 12
SKIP = 2
SOURCE = "a photo of a cat"
TARGETS = ["a photo of a dog", "a painting of a tiger"]
G_INV = 3.5


def pnp(**opts):  # noqa: ANN003, ANN201
    return EDITORS.build({"name": "plug_and_play", **opts})


@pytest.fixture(scope="module")
def ef_inversion(tiny, photo_x0):  # noqa: ANN001, ANN201
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": G_INV})
    return inverter.invert(tiny, photo_x0, SOURCE, num_steps=N, skip=0, generator=make_generator(3))


@pytest.fixture(scope="module")
def ddim_inv(tiny, photo_x0):  # noqa: ANN001, ANN201
    return ddim_inversion(tiny, photo_x0, SOURCE, N, G_INV)


def test_no_injection_equals_text_editor(tiny, ef_inversion, ddim_inv):  # noqa: ANN001
    text = EDITORS.build({"name": "text", "guidance_scale": 7.5})
    editor = pnp(guidance_scale=7.5, feature_injection=0.0, attention_injection=0.0)
    for inv in (ef_inversion, ddim_inv):
        ref = text.edit(tiny, inv, SOURCE, TARGETS, skip=SKIP)
        out = editor.edit(tiny, inv, SOURCE, TARGETS, skip=SKIP)
        assert out.shape == (2, 4, 16, 16)
        assert (out - ref).abs().max() <= 1e-4


def test_full_injection_with_source_prompt_reproduces_source(tiny, ef_inversion, ddim_inv):  # noqa: ANN001
    editor = pnp(guidance_scale=G_INV, feature_injection=1.0, attention_injection=1.0)
    out = editor.edit(tiny, ef_inversion, SOURCE, [SOURCE], skip=SKIP)
    assert (out - ef_inversion.x0).abs().max() <= 1e-4  # edit-friendly: exact
    # DDIM: the source branch is DDIM sampling from the inverted latent, as the text editor's
    text = EDITORS.build({"name": "text", "guidance_scale": G_INV})
    ref = text.edit(tiny, ddim_inv, SOURCE, [SOURCE], skip=SKIP)
    out = editor.edit(tiny, ddim_inv, SOURCE, [SOURCE], skip=SKIP)
    assert (out - ref).abs().max() <= 1e-4


def test_source_branch_regenerated_equals_stored_trajectory(tiny, ef_inversion):  # noqa: ANN001
    """With edit-friendly maps, regenerating the source row = taking it from the inversion."""
    a = pnp(source_latents="regenerate").edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    b = pnp(source_latents="inversion").edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert (a - b).abs().max() <= 1e-4


def test_injection_changes_edit_toward_source(tiny, ef_inversion):  # noqa: ANN001
    text = EDITORS.build({"name": "text", "guidance_scale": 7.5})
    plain = text.edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    attn_only = pnp(feature_injection=0.0, attention_injection=0.5).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    feat_only = pnp(feature_injection=0.8, attention_injection=0.0).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    both = pnp().edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    for out in (attn_only, feat_only):
        assert (out - plain).abs().max() > 1e-3
    # the injected source structure pulls every target toward the source latent
    d_plain = (plain - ef_inversion.x0).flatten(1).norm(dim=1)
    d_both = (both - ef_inversion.x0).flatten(1).norm(dim=1)
    assert bool((d_both < d_plain).all()), (d_both, d_plain)


def test_several_targets_one_batch_per_step(tiny, ef_inversion):  # noqa: ANN001
    editor = pnp()
    nfe0 = tiny.nfe
    together = editor.edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert tiny.nfe - nfe0 == N - SKIP  # source and both targets, CFG included: one pass per step
    one_by_one = pnp(targets_per_batch=1).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert (together - one_by_one).abs().max() <= 1e-4
    single = editor.edit(tiny, ef_inversion, SOURCE, TARGETS[1:], skip=SKIP)
    assert (together[1:] - single).abs().max() <= 1e-4


def test_hooks_removed_after_call_and_after_error(tiny, ef_inversion):  # noqa: ANN001
    before = hook_state(tiny.unet)
    pnp().edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert hook_state(tiny.unet) == before
    failing = FailingBackbone(tiny, fail_at=3)
    with pytest.raises(RuntimeError, match="injected failure"):
        pnp().edit(failing, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert failing.calls == 3
    assert hook_state(tiny.unet) == before


def test_works_under_inference_mode(tiny, photo_x0, ef_inversion):  # noqa: ANN001
    ref = pnp().edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    with torch.inference_mode():
        inv = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": G_INV}).invert(
            tiny, photo_x0, SOURCE, num_steps=N, skip=0, generator=make_generator(3)
        )
        out = pnp().edit(tiny, inv, SOURCE, TARGETS, skip=SKIP)
    assert (out - ref).abs().max() <= 1e-4


def test_layer_mapping_onto_tiny_unet(tiny):  # noqa: ANN001
    opts = pnp().options
    assert resolve_layers(tiny.unet, opts.feature_layers, "f") == ["up_blocks.1.resnets.1"]
    assert resolve_layers(tiny.unet, opts.attention_layers, "a") == [
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.0",
    ]
    with pytest.raises(ConfigError, match="no layer 'mid_block.bogus'"):
        resolve_layers(tiny.unet, ["mid_block.bogus"], "a")


def test_bad_options_and_inputs(tiny, ef_inversion):  # noqa: ANN001
    with pytest.raises(ConfigError, match="feature_injection"):
        pnp(feature_injection=1.5).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    with pytest.raises(ConfigError, match="source_latents"):
        pnp(source_latents="bogus").edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    with pytest.raises(InputError, match="target_prompts is empty"):
        pnp().edit(tiny, ef_inversion, SOURCE, [], skip=SKIP)
    with pytest.raises(ConfigError, match="unknown option"):
        pnp(bogus=1)


def test_preset_builds_paper_defaults():
    editor = EDITORS.build(group_node("editor", "plug_and_play"))
    o = editor.options
    assert (o.feature_injection, o.attention_injection, o.guidance_scale) == (0.8, 0.5, 7.5)
    assert o.feature_layers == ["up_blocks.1.resnets.1"] and len(o.attention_layers) == 8


def test_cli_edit_with_both_editors(photo_path, tmp_path):  # noqa: ANN001
    """``editfriendly edit`` runs both editors (list-valued options end up in edits.jsonl)."""
    import json

    from framework.cli import main

    for editor in ("plug_and_play", "zero_shot_ef"):
        out = tmp_path / editor
        rc = main([
            "edit", "--image", str(photo_path), "--source", SOURCE, "--target", TARGETS[0],
            "--target", TARGETS[1], "--backbone", "tiny", "--device", "cpu", "--steps", "8",
            "--skip", "2", "--out", str(out), "--no-progress", f"editor={editor}",
        ])
        assert rc == 0
        rows = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(r["edit_nfe"] > 0 for r in rows)
        if editor == "plug_and_play":
            assert rows[0]["editor"]["feature_layers"] == ["up_blocks.1.resnets.1"]
        else:
            assert rows[0]["editor"]["cross_attention_guidance"] == 0.03
        assert len(list(out.glob("*_0[01]_*.png"))) == 2
