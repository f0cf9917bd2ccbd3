"""Prompt-to-Prompt editor on the tiny backbone: exactness, controls, batching, restoration.

Prompts use words of the tiny tokenizer's vocabulary (single tokens): "a photo of a cat" has
6 tokens with start and end.
"""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from framework.errors import ConfigError, InputError
from framework.inversion import Inversion
from framework.random import make_generator
from framework.registry import EDITORS, INVERTERS
from plugins.editors.prompt_to_prompt import (
    AttentionController,
    ControlledAttnProcessor,
    Layer,
    PromptToPrompt,
    align_tokens,
    attention_control,
    token_mapping,
    unet_layers,
    word_positions,
)

N, SKIP = 20, 4  # few steps keep the file fast
SOURCE = "a photo of a cat"
SAME = "a photo of a dog"  # same token count: replace
LONGER = "a red photo of a cat"  # one more token: refine
RECON_TOL = 1e-4  # float32, batch of 1 + K rows vs the inversion's batch of 1


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two threads can be 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ef_inversion(tiny, photo_x0) -> Inversion:
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly"})
    return inverter.invert(tiny, photo_x0, SOURCE, num_steps=N, skip=SKIP, generator=make_generator(0))


@pytest.fixture(scope="module")
def ddim_like(ef_inversion) -> Inversion:
    """A deterministic inversion as the ddim inverter returns it: no noise maps, eta 0."""
    return dataclasses.replace(ef_inversion, zs=None, eta=0.0, method="ddim", guidance_scale=1.0)


def p2p(**options) -> PromptToPrompt:
    return EDITORS.build({"name": "prompt_to_prompt", **options})


def run(tiny, inversion, targets, **options):
    return p2p(**options).run(tiny, inversion, SOURCE, targets, skip=SKIP, generator=make_generator(1))


@pytest.fixture(scope="module")
def uncontrolled(tiny, ef_inversion):
    """Controls active for zero steps, targets SAME and LONGER (the baseline of the edits)."""
    return run(tiny, ef_inversion, [SAME, LONGER], cross_replace_steps=0.0, self_replace_steps=0.0)


# ----------------------------------------------------------------------------- 1. exactness
def test_source_row_reconstructs_x0_and_zero_controls_equal_text_editor(tiny, ef_inversion, photo_x0, uncontrolled):
    controlled = run(tiny, ef_inversion, [SAME, LONGER])  # the defaults: cross 0.6, self 0.2
    assert controlled.modes == ["replace", "refine"]
    assert controlled.controlled_calls > 0
    assert (controlled.source - photo_x0).abs().max() <= RECON_TOL
    assert (uncontrolled.source - photo_x0).abs().max() <= RECON_TOL
    assert uncontrolled.controlled_calls == 0
    text = EDITORS.build({"name": "text", "guidance_scale": 9.0})
    expected = text.edit(tiny, ef_inversion, SOURCE, [SAME, LONGER], skip=SKIP)
    torch.testing.assert_close(uncontrolled.targets, expected, atol=1e-4, rtol=0)
    # and the control does change the targets
    assert (controlled.targets - uncontrolled.targets).abs().amax(dim=(1, 2, 3)).min() > 1e-2


def test_defaults_follow_the_inversion(tiny, ef_inversion, ddim_like):
    ed = p2p()
    assert ed.windows(ef_inversion) == ((0.0, 0.6), (0.0, 0.2))
    assert ed.windows(ddim_like) == ((0.0, 0.8), (0.0, 0.4))
    assert p2p(cross_replace_steps=[0.1, 0.5], self_replace_steps=0.3).windows(ddim_like) == ((0.1, 0.5), (0.0, 0.3))
    # step indices k count from the edit's first step, fractions of all N steps (reference code)
    res = run(tiny, ef_inversion, [SAME], cross_replace_steps=[0.1, 0.5])
    assert res.cross_steps == (2, 10) and res.self_steps == (0, 4)


def test_presets_compose():
    from framework.config import compose

    cfg = compose(overrides=["editor=prompt_to_prompt_ddim", "backbone=tiny"])
    assert cfg.editor.name == "prompt_to_prompt"
    assert (cfg.editor.cross_replace_steps, cfg.editor.self_replace_steps) == (0.8, 0.4)
    cfg = compose(overrides=["editor=prompt_to_prompt", "backbone=tiny", "editor.blend_words=[cat,dog]"])
    assert cfg.editor.cross_replace_steps is None and list(cfg.editor.blend_words) == ["cat", "dog"]
    assert isinstance(EDITORS.build(cfg.editor), PromptToPrompt)
    cfg = compose(overrides=["editor=prompt_to_prompt_ef", "backbone=tiny"])
    assert (cfg.editor.cross_replace_steps, cfg.editor.guidance_scale) == (0.6, 9.0)


# ----------------------------------------------------------------------------- 2. identity
@pytest.mark.parametrize("mode", ["replace", "refine"])
def test_identical_prompts_with_full_replacement_equal_the_source(tiny, ef_inversion, mode):
    res = run(
        tiny,
        ef_inversion,
        [SOURCE, SOURCE],
        mode=mode,
        guidance_scale=ef_inversion.guidance_scale,
        cross_replace_steps=1.0,
        self_replace_steps=1.0,
        max_self_resolution=1.0,
        equalizer_words=["cat"],
        equalizer_weights=[1.0],
    )
    assert res.modes == [mode, mode]
    assert len(res.controlled_layers) == 14  # every self- and cross-attention layer
    assert res.controlled_calls == 14 * (N - SKIP)
    torch.testing.assert_close(res.targets, res.source.expand_as(res.targets), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- 3. the controls
def test_replace_and_refine_change_the_output(tiny, ef_inversion, uncontrolled):
    res = run(tiny, ef_inversion, [SAME, LONGER], cross_replace_steps=1.0, self_replace_steps=0.0)
    assert res.modes == ["replace", "refine"]
    diff = (res.targets - uncontrolled.targets).abs().amax(dim=(1, 2, 3))
    assert diff.min() > 1e-2


def test_self_attention_replacement_changes_the_output(tiny, ef_inversion, uncontrolled):
    # tiny's latents are small: at the reference's 16/64 of the side no self-attention layer is left
    res = run(tiny, ef_inversion, [SAME, LONGER], cross_replace_steps=0.0, self_replace_steps=1.0,
              max_self_resolution=1.0)
    assert (res.targets - uncontrolled.targets).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_reweight_changes_the_output(tiny, ef_inversion):
    plain = run(tiny, ef_inversion, [SAME], cross_replace_steps=0.6, self_replace_steps=0.2)
    heavy = run(
        tiny, ef_inversion, [SAME], cross_replace_steps=0.6, self_replace_steps=0.2,
        equalizer_words=["dog"], equalizer_weights=[4.0],
    )
    assert (heavy.targets - plain.targets).abs().max() > 1e-2
    torch.testing.assert_close(heavy.source, plain.source, atol=1e-6, rtol=0)


def test_local_blend_restricts_the_change_to_its_mask(tiny, ef_inversion):
    plain = run(tiny, ef_inversion, [SAME, LONGER])
    # the random model's word maps are nearly flat (normalized values ~0.9-1.0), hence the threshold
    blended = run(tiny, ef_inversion, [SAME, LONGER], blend_words=["cat", "dog"], threshold=0.96)
    mask = blended.mask
    assert mask is not None and mask.shape == (2, 1, 16, 16)
    covered = mask.mean(dim=(1, 2, 3))
    assert (covered > 0).all() and (covered < 1).all()  # a real region, not all or nothing
    assert (blended.targets - plain.targets).abs().max() > 1e-2
    outside = (blended.targets - blended.source) * (1 - mask)
    assert outside.abs().max() <= 1e-6
    inside = (blended.targets - blended.source) * mask
    assert inside.abs().amax(dim=(1, 2, 3)).min() > 1e-3


# ----------------------------------------------------------------------------- 4. batches, DDIM
def test_several_targets_in_one_batch_equal_separate_runs(tiny, ef_inversion):
    opts = dict(blend_words=["cat", "dog"], threshold=0.96, equalizer_words=["cat", "dog"], equalizer_weights=[2.0])
    targets = [SAME, LONGER, "a painting of a red cat"]
    together = run(tiny, ef_inversion, targets, **opts)
    assert together.targets.shape == (3, 4, 16, 16)
    for k, target in enumerate(targets):
        alone = run(tiny, ef_inversion, [target], **opts)
        torch.testing.assert_close(together.targets[k : k + 1], alone.targets, atol=1e-4, rtol=0)


def test_deterministic_inversion_without_noise_maps(tiny, ddim_like):
    zero = run(tiny, ddim_like, [SAME, LONGER], cross_replace_steps=0.0, self_replace_steps=0.0)
    text = EDITORS.build({"name": "text", "guidance_scale": 9.0})
    expected = text.edit(tiny, ddim_like, SOURCE, [SAME, LONGER], skip=SKIP)
    torch.testing.assert_close(zero.targets, expected, atol=1e-4, rtol=0)
    res = run(tiny, ddim_like, [SAME, LONGER])  # defaults for DDIM: cross 0.8, self 0.4
    assert (res.cross_steps, res.self_steps) == ((0, 16), (0, 8))
    other = p2p().run(tiny, ddim_like, SOURCE, [SAME, LONGER], skip=SKIP, generator=make_generator(99))
    torch.testing.assert_close(other.targets, res.targets, atol=0, rtol=0)  # eta 0: no randomness
    assert (res.targets - zero.targets).abs().amax(dim=(1, 2, 3)).min() > 1e-2
    # the source row is the deterministic reverse process under the source prompt
    source_only = EDITORS.build({"name": "text", "guidance_scale": 1.0}).edit(
        tiny, ddim_like, SOURCE, [SOURCE], skip=SKIP
    )
    torch.testing.assert_close(res.source, source_only, atol=1e-4, rtol=0)


def test_fresh_noise_is_shared_by_all_rows(tiny, ef_inversion):
    """Without noise maps and eta > 0 every row gets the same fresh noise."""
    inv = dataclasses.replace(ef_inversion, zs=None)
    res = p2p(guidance_scale=inv.guidance_scale).run(
        tiny, inv, SOURCE, [SOURCE], skip=SKIP, generator=make_generator(3)
    )
    torch.testing.assert_close(res.targets, res.source, atol=1e-6, rtol=0)


def test_edit_matches_run_and_pipeline(tiny, photo_x0, ef_inversion):
    ed = p2p()
    latents = ed.edit(tiny, ef_inversion, SOURCE, [SAME], skip=SKIP)
    torch.testing.assert_close(latents, ed.run(tiny, ef_inversion, SOURCE, [SAME], skip=SKIP).targets, atol=0, rtol=0)
    from framework.edit import invert_and_edit

    image = tiny.decode(photo_x0)
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly"})
    out = invert_and_edit(tiny, inverter, ed, image, SOURCE, [SAME, LONGER], num_steps=10, skip=3, seed=0)
    assert out.images.shape == (2, 3, 32, 32) and torch.isfinite(out.images).all()
    assert out.edit_nfe == 10 - 3  # one batched forward pass per step for 1 + K rows, both branches


# ----------------------------------------------------------------------------- 5. processors
def test_processors_restored_after_an_edit_and_after_an_error(tiny, ef_inversion, monkeypatch):
    before = tiny.unet.attn_processors
    run(tiny, ef_inversion, [SAME], blend_words=["dog"])
    after = tiny.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)

    seen = {}
    original = tiny.predict_noise

    def failing(*args, **kwargs):
        out = original(*args, **kwargs)
        if not seen:
            seen.update(tiny.unet.attn_processors)
            raise RuntimeError("forced failure mid-edit")
        return out

    monkeypatch.setattr(tiny, "predict_noise", failing)
    with pytest.raises(RuntimeError, match="forced failure"):
        run(tiny, ef_inversion, [SAME, LONGER])
    monkeypatch.undo()
    after = tiny.unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    # during the edit: every cross-attention layer; self-attention only at <= (16/64 · 16)² = 16
    # queries (the reference's rule scaled to tiny's 16×16 latents): none of tiny's 16×16 / 8×8
    controlled = {k for k, v in seen.items() if isinstance(v, ControlledAttnProcessor)}
    layers = {ly.name: ly for ly in unet_layers(tiny.unet, 16, 16)}
    expected = {k for k, ly in layers.items() if ly.is_cross or ly.positions <= 16}
    assert controlled == expected and len(expected) == 7
    assert all(seen[k] is before[k] for k in before if k not in controlled)  # still SDPA
    assert {(ly.height, ly.width) for ly in layers.values()} == {(16, 16), (8, 8)}


def test_attention_control_restores_the_same_objects_on_error(tiny):
    before = tiny.unet.attn_processors
    name = next(iter(before))
    with pytest.raises(KeyError):
        with attention_control(tiny.unet, {name: object()}):
            assert tiny.unet.attn_processors[name] is not before[name]
            raise KeyError("boom")
    assert all(tiny.unet.attn_processors[k] is v for k, v in before.items())


# ----------------------------------------------------------------------------- units
class WordTokenizer:
    """A stand-in tokenizer with a fixed vocabulary: "tiger" is two tokens, every other word one;
    start token 90, end token 91 (the shape of CLIP's tokenizer output that P2P uses)."""

    VOCAB = {"a": [1], "photo": [2], "of": [3], "cat": [4], "dog": [5], "red": [7], "tiger": [8, 9],
             "on": [10], "grass": [11]}

    def __call__(self, text, add_special_tokens=True, truncation=False, max_length=None):
        ids = [t for w in text.split(" ") for t in self.VOCAB[w]]
        if add_special_tokens:
            ids = [90, *ids, 91]
        return types.SimpleNamespace(input_ids=ids[:max_length] if truncation else ids)


def test_align_tokens_as_the_reference():
    # start, a, photo, of, a, cat, end  vs  start, a, red, photo, of, a, cat, end
    src = [90, 1, 2, 3, 1, 4, 91]
    tgt = [90, 1, 7, 2, 3, 1, 4, 91]
    assert align_tokens(src, tgt) == [0, 1, -1, 2, 3, 4, 5, 6]
    assert align_tokens([90, 1, 4, 91], [90, 1, 5, 91]) == [0, 1, -1, 3]  # a substitution is not aligned
    # Repeated words, worked out by hand on the score table (gap 0, match 1, mismatch -1) with the
    # reference's preference left > up > diagonal: "a cat" -> "a cat a cat" aligns the FIRST
    # "a cat" of the target and leaves the second new. (Preferring the diagonal, as this project
    # did before, aligned the second one: [0, -1, -1, 1, 2, 3].)
    assert align_tokens([90, 1, 4, 91], [90, 1, 4, 1, 4, 91]) == [0, 1, 2, -1, -1, 3]
    # "a cat a cat" -> "a cat": the target's "a cat" takes the source's first "a cat" too
    # (from (5, 3): up, up, then diagonals).
    assert align_tokens([90, 1, 4, 1, 4, 91], [90, 1, 4, 91]) == [0, 1, 2, 5]


def test_token_mapping_by_words_as_the_reference():
    tok = WordTokenizer()
    # auto: same number of WORDS -> replace (here with different token counts), else refine
    m, alpha, mode = token_mapping(tok, "a cat on grass", "a tiger on grass", "auto", 8)
    assert mode == "replace" and bool((alpha == 1).all())
    # P2P's replacement mapper, by hand: tokens 0, 1 one to one; "cat" (position 2) shared by the
    # two "tiger" tokens (2, 3) with weight 1/2; after the last replaced word the reference maps
    # every position to itself, so target "on" (4) gets source position 4 ("grass").
    expected = torch.zeros(8, 8)
    expected[0, 0] = expected[1, 1] = 1
    expected[2, 2] = expected[2, 3] = 0.5
    for j in range(4, 8):
        expected[j, j] = 1
    assert torch.equal(m, expected)
    m, _, mode = token_mapping(tok, "a cat on grass", "a dog on grass", "auto", 8)
    assert mode == "replace" and torch.equal(m, torch.eye(8))
    m, alpha, mode = token_mapping(tok, "a photo of a cat", "a red photo of a cat", "auto", 10)
    assert mode == "refine"
    assert m.argmax(0).tolist() == [0, 1, 0, 2, 3, 4, 5, 6, 8, 9] and bool((m.sum(0) == 1).all())
    assert alpha.tolist() == [1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    with pytest.raises(InputError, match="same number of words"):
        token_mapping(tok, "a photo of a cat", "a red photo of a cat", "replace", 10)


def test_self_attention_replaced_at_the_authors_resolution(tiny):
    """Reference: self-attention maps are replaced where the layer has <= 16² queries, i.e. the
    16×16 and 8×8 layers of SD's UNet at 64×64 latents (max_self_resolution 0.25); 0.5 adds 32×32."""
    from diffusers import UNet2DConditionModel

    sd = UNet2DConditionModel(  # SD 1.x's block layout, narrow channels (built in well under a second)
        block_out_channels=(32, 32, 32, 32), layers_per_block=2, cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=8,
    )
    layers = unet_layers(sd, 64, 64)
    for fraction, grids in ((0.25, {(16, 16), (8, 8)}), (0.5, {(32, 32), (16, 16), (8, 8)})):
        limit = (fraction * 64) ** 2
        chosen = {(ly.height, ly.width) for ly in layers if not ly.is_cross and ly.positions <= limit}
        assert chosen == grids
    assert p2p().options.max_self_resolution == 0.25
    # 64×64 latents, SD's layout: the self-attention layers at 16×16 and 8×8 are 2 + 3 + 1 of 16
    names = [ly.name for ly in layers if not ly.is_cross and ly.positions <= 16**2]
    assert len(names) == 6 and all(n.startswith(("down_blocks.2", "up_blocks.1", "mid_block")) for n in names)


def test_word_positions(tiny):
    assert word_positions(tiny.tokenizer, "a photo of a cat", "cat") == [5]
    assert word_positions(tiny.tokenizer, "a photo of a cat", "a") == [1, 4]
    assert word_positions(tiny.tokenizer, "A cat, sitting", "cat") == [2]
    assert word_positions(tiny.tokenizer, "a photo of a cat", "dog") == []


def test_controller_replaces_maps_of_target_rows():
    torch.manual_seed(0)
    b, heads, n, keys = 3, 2, 4, 5
    index = torch.tensor([[0, 1, 2, 3, 4], [0, 2, 1, 3, 4]])
    maps = torch.nn.functional.one_hot(index, keys).transpose(1, 2).float()  # (K, source, target)
    alpha = torch.tensor([[1.0, 1, 1, 1, 1], [1.0, 1, 0, 1, 1]])
    ctl = AttentionController(b, maps, alpha, (0, 1), (0, 1), equalizer=torch.tensor([[1.0, 2, 1, 1, 1], [1.0] * 5]))
    ctl.begin_step(0)
    probs = torch.rand(2 * b, heads, n, keys).softmax(-1)
    out = ctl.control(Layer("x", True, 2, 2), probs)
    torch.testing.assert_close(out[:b], probs[:b])  # unconditional half untouched
    torch.testing.assert_close(out[b], probs[b])  # source row untouched
    src, own2 = probs[b], probs[b + 2]
    expected1 = src.clone()
    expected1[..., 1] *= 2
    torch.testing.assert_close(out[b + 1], expected1)
    expected2 = torch.stack([src[..., 0], src[..., 2], own2[..., 2], src[..., 3], src[..., 4]], -1)
    torch.testing.assert_close(out[b + 2], expected2)
    out = ctl.control(Layer("s", False, 2, 2), probs[b:])  # self-attention, no CFG half
    torch.testing.assert_close(out, probs[b : b + 1].expand(b, -1, -1, -1))
    ctl.end_step()
    ctl.begin_step(1)  # outside both windows
    assert not ctl.cross_active() and not ctl.self_active()


def test_bad_options_and_inputs(tiny, ef_inversion):
    with pytest.raises(ConfigError, match="mode"):
        p2p(mode="swap")
    with pytest.raises(ConfigError, match="cross_replace_steps"):
        p2p(cross_replace_steps=[0.5, 0.2])
    with pytest.raises(ConfigError, match="self_replace_steps"):
        p2p(self_replace_steps=1.5)
    with pytest.raises(ConfigError, match="equalizer_weights"):
        p2p(equalizer_words=["cat", "dog"], equalizer_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="unknown option"):
        p2p(cross_steps=0.5)
    with pytest.raises(InputError, match="blend_words"):
        run(tiny, ef_inversion, [SAME], blend_words=["zebra"])
    with pytest.raises(InputError, match="equalizer_words"):
        run(tiny, ef_inversion, [SAME], equalizer_words=["zebra"], equalizer_weights=[2.0])
    with pytest.raises(InputError, match="same number of words"):
        run(tiny, ef_inversion, [LONGER], mode="replace")
    with pytest.raises(InputError, match="skip"):
        p2p().edit(tiny, ef_inversion, SOURCE, [SAME], skip=SKIP - 1)


def test_cli_edit_with_prompt_to_prompt(photo_path, tmp_path, capsys):
    import json

    from framework.cli import main

    out = tmp_path / "out"
    argv = [
        "edit", "--image", str(photo_path), "--source", SOURCE, "--target", SAME, "--target", LONGER,
        "--backbone", "tiny", "--device", "cpu", "--steps", "8", "--skip", "2", "--out", str(out),
        "--no-progress", "editor=prompt_to_prompt", "editor.blend_words=[cat,dog]", "editor.threshold=0.9",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["editor"]["name"] == "prompt_to_prompt"
    assert rows[0]["editor"]["blend_words"] == ["cat", "dog"] and rows[0]["edit_nfe"] == 8 - 2
    assert all((out / p).exists() for p in (rows[0]["output"], rows[1]["output"]))
    assert main([*argv[:-3], "editor=prompt_to_prompt", "editor.mode=swap"]) == 2
    assert "mode must be one of" in capsys.readouterr().err
