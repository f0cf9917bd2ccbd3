"""Plug-and-Play on the tiny backbone: identities with the text editor, exact source
reconstruction, where the injected values come from (the empty-prompt source row, as in
pnp-diffusers), the injection's effect, hook removal, inference mode, several targets."""

from __future__ import annotations

import contextlib

import pytest
import torch

import plugins.editors.plug_and_play as pnp_module
from framework.config import group_node
from framework.errors import ConfigError, InputError
from framework.random import make_generator
from framework.registry import EDITORS, INVERTERS
from plugins.editors.unet_hooks import forward_hooks, hook_state, resolve_layers
from tests.helpers.attention_editors import FailingBackbone, ddim_inversion

N = 12
SKIP = 2
SOURCE = "a photo of a cat"
TARGETS = ["a photo of a dog", "a painting of a tiger"]
G_INV = 3.5


def pnp(**opts):
    return EDITORS.build({"name": "plug_and_play", **opts})


@pytest.fixture(scope="module")
def ef_inversion(tiny, photo_x0):
    inverter = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": G_INV})
    return inverter.invert(tiny, photo_x0, SOURCE, num_steps=N, skip=0, generator=make_generator(3))


@pytest.fixture(scope="module")
def ddim_inv(tiny, photo_x0):
    return ddim_inversion(tiny, photo_x0, SOURCE, N, G_INV)


def test_no_injection_equals_text_editor(tiny, ef_inversion, ddim_inv):
    """Without injection and negative prompt the targets are the text editor's, whichever source
    branch runs beside them."""
    text = EDITORS.build({"name": "text", "guidance_scale": 7.5})
    for branch in ("empty_prompt", "guided"):
        editor = pnp(
            guidance_scale=7.5, feature_injection=0.0, attention_injection=0.0, negative_prompt="",
            source_branch=branch,
        )
        for inv in (ef_inversion, ddim_inv):
            ref = text.edit(tiny, inv, SOURCE, TARGETS, skip=SKIP)
            out = editor.edit(tiny, inv, SOURCE, TARGETS, skip=SKIP)
            assert out.shape == (2, 4, 16, 16)
            assert (out - ref).abs().max() <= 1e-4


def test_guided_full_injection_with_source_prompt_reproduces_source(tiny, ef_inversion, ddim_inv):
    """The ``guided`` variant: source rows conditioned as the inversion, one per guidance half;
    with the source prompt as target everything injected, the target is the source row."""
    editor = pnp(
        guidance_scale=G_INV, feature_injection=1.0, attention_injection=1.0, negative_prompt="",
        source_branch="guided", source_latents="regenerate",
    )
    out = editor.edit(tiny, ef_inversion, SOURCE, [SOURCE], skip=SKIP)
    assert (out - ef_inversion.x0).abs().max() <= 1e-4  # edit-friendly: exact
    # DDIM: the source branch is DDIM sampling from the inverted latent, as the text editor's
    text = EDITORS.build({"name": "text", "guidance_scale": G_INV})
    ref = text.edit(tiny, ddim_inv, SOURCE, [SOURCE], skip=SKIP)
    out = editor.edit(tiny, ddim_inv, SOURCE, [SOURCE], skip=SKIP)
    assert (out - ref).abs().max() <= 1e-4


def test_source_branch_regenerated_equals_stored_trajectory(tiny, ef_inversion):
    """With edit-friendly maps, regenerating the source row = taking it from the inversion."""
    a = pnp(source_latents="regenerate").edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    b = pnp(source_latents="inversion").edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert (a - b).abs().max() <= 1e-4


def test_injection_changes_edit_toward_source(tiny, ef_inversion):
    plain = pnp(feature_injection=0.0, attention_injection=0.0).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    attn_only = pnp(feature_injection=0.0, attention_injection=0.5).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    feat_only = pnp(feature_injection=0.8, attention_injection=0.0).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    both = pnp().edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    for out in (attn_only, feat_only):
        assert (out - plain).abs().max() > 1e-3
    # the injected source structure pulls every target toward the source latent
    d_plain = (plain - ef_inversion.x0).flatten(1).norm(dim=1)
    d_both = (both - ef_inversion.x0).flatten(1).norm(dim=1)
    assert bool((d_both < d_plain).all()), (d_both, d_plain)


def test_several_targets_one_batch_per_step(tiny, ef_inversion):
    editor = pnp()
    rows: list[int] = []
    handle = tiny.unet.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        nfe0 = tiny.nfe
        together = editor.edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
        assert tiny.nfe - nfe0 == N - SKIP  # source and both targets, CFG included: one pass per step
        assert rows == [1 + 2 * 2] * (N - SKIP)  # [source (""), 2 targets uncond, 2 targets cond]
        rows.clear()
        # regenerating the source needs its guided prediction: the source prompt's row is added,
        # the null-text row is the empty-prompt row itself
        pnp(source_latents="regenerate").edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
        assert rows == [2 + 2 * 2] * (N - SKIP)
        rows.clear()
        # with the empty source prompt (pnp-diffusers' default inversion prompt) every source
        # row is the empty-prompt row
        pnp(source_latents="regenerate").edit(tiny, ef_inversion, "", TARGETS, skip=SKIP)
        assert rows == [1 + 2 * 2] * (N - SKIP)
        rows.clear()
        pnp(source_branch="guided").edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
        assert rows == [2 * (1 + 2)] * (N - SKIP)  # a source row in each guidance half
    finally:
        handle.remove()
    one_by_one = pnp(targets_per_batch=1).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert (together - one_by_one).abs().max() <= 1e-4
    single = editor.edit(tiny, ef_inversion, SOURCE, TARGETS[1:], skip=SKIP)
    assert (together[1:] - single).abs().max() <= 1e-4


def test_hooks_removed_after_call_and_after_error(tiny, ef_inversion):
    before = hook_state(tiny.unet)
    pnp().edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert hook_state(tiny.unet) == before
    failing = FailingBackbone(tiny, fail_at=3)
    with pytest.raises(RuntimeError, match="injected failure"):
        pnp().edit(failing, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    assert failing.calls == 3
    assert hook_state(tiny.unet) == before


def test_works_under_inference_mode(tiny, photo_x0, ef_inversion):
    ref = pnp().edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    with torch.inference_mode():
        inv = INVERTERS.build({"name": "ddpm_edit_friendly", "guidance_scale": G_INV}).invert(
            tiny, photo_x0, SOURCE, num_steps=N, skip=0, generator=make_generator(3)
        )
        out = pnp().edit(tiny, inv, SOURCE, TARGETS, skip=SKIP)
    assert (out - ref).abs().max() <= 1e-4


def test_layer_mapping_onto_tiny_unet(tiny):
    opts = pnp().options
    assert resolve_layers(tiny.unet, opts.feature_layers, "f") == ["up_blocks.1.resnets.1"]
    assert resolve_layers(tiny.unet, opts.attention_layers, "a") == [
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.0",
    ]
    with pytest.raises(ConfigError, match="no layer 'mid_block.bogus'"):
        resolve_layers(tiny.unet, ["mid_block.bogus"], "a")


def test_bad_options_and_inputs(tiny, ef_inversion):
    with pytest.raises(ConfigError, match="feature_injection"):
        pnp(feature_injection=1.5).edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
    with pytest.raises(ConfigError, match="source_branch"):
        pnp(source_branch="bogus").edit(tiny, ef_inversion, SOURCE, TARGETS, skip=SKIP)
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
    # pnp-diffusers' config_pnp.yaml: negative_prompt, and its source branch / saved latents
    assert o.negative_prompt == "ugly, blurry, black, low res, unrealistic"
    assert (o.source_branch, o.source_latents) == ("empty_prompt", "inversion")
    assert pnp().options.negative_prompt == "ugly, blurry, black, low res, unrealistic"


def test_cli_edit_with_both_editors(photo_path, tmp_path):
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


# ----------------------------------------------------------------------------- provenance
class _Recorder:
    """Records, per UNet call, the rows' latents and text conditioning, and for every hooked
    module (``conv2``, ``to_q``, ``to_k``) its output before and after the editor's hook."""

    def __init__(self, unet) -> None:
        self.unet = unet
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (sample, encoder_hidden_states)
        self.values: list[tuple[int, str, torch.Tensor, torch.Tensor]] = []  # (call, kind, raw, final)
        self._raw: dict[int, torch.Tensor] = {}

    def pre_unet(self, module, args, kwargs):
        self.calls.append((args[0].clone(), kwargs["encoder_hidden_states"].clone()))

    @contextlib.contextmanager
    def hooks(self, pairs):
        """Stands in for ``forward_hooks`` in the editor: the editor's hooks, with one recording
        hook before (raw output) and one after (what the rest of the network sees) each."""
        pairs = list(pairs)
        names = {id(m): n for n, m in self.unet.named_modules()}
        with forward_hooks(pairs):
            handles = []
            for module, _ in pairs:
                kind = names[id(module)].split(".")[-1]
                handles.append(module.register_forward_hook(self._before, prepend=True))
                handles.append(module.register_forward_hook(lambda m, a, out, kind=kind: self._after(m, out, kind)))
            try:
                yield
            finally:
                for h in handles:
                    h.remove()

    def _before(self, module, args, out):
        self._raw[id(module)] = out.clone()

    def _after(self, module, out, kind):
        self.values.append((len(self.calls) - 1, kind, self._raw.pop(id(module)), out.clone()))


def _record(tiny, monkeypatch, editor, inversion, targets=TARGETS, skip=SKIP):
    rec = _Recorder(tiny.unet)
    monkeypatch.setattr(pnp_module, "forward_hooks", rec.hooks)
    handle = tiny.unet.register_forward_pre_hook(rec.pre_unet, with_kwargs=True)
    try:
        out = editor.edit(tiny, inversion, SOURCE, targets, skip=skip)
    finally:
        handle.remove()
    return rec, out


def test_injected_values_come_from_the_empty_prompt_source_row(tiny, ef_inversion, monkeypatch):
    """pnp-diffusers' rule: the batch is [source latents with "", x (negative prompt), x (prompt)]
    and the source row's conv2 output and self-attention q/k are written into both guidance rows
    of every target during the first ⌊0.8 n⌋ / ⌊0.5 n⌋ steps."""
    k, start = len(TARGETS), N - SKIP
    rec, _ = _record(tiny, monkeypatch, pnp(), ef_inversion)
    empty = tiny.encode_prompt([""]).embeds[0]
    negative = tiny.encode_prompt(["ugly, blurry, black, low res, unrealistic"]).embeds[0]
    prompts = tiny.encode_prompt(TARGETS).embeds
    assert len(rec.calls) == start
    for j, (sample, emb) in enumerate(rec.calls):
        i = start - j  # the step
        assert sample.shape[0] == emb.shape[0] == 1 + 2 * k
        assert torch.equal(emb[0], empty)  # the source row: the empty prompt
        assert all(torch.equal(emb[1 + r], negative) for r in range(k))  # targets, unconditional
        assert torch.equal(emb[1 + k :], prompts)  # targets, conditional
        assert torch.equal(sample[0], ef_inversion.xts[i][0])  # the stored x_i
        assert torch.equal(sample[1 : 1 + k], sample[1 + k :])  # both guidance rows see x
    n_feat, n_attn = int(0.8 * start), int(0.5 * start)
    kinds = {"conv2": n_feat, "to_q": n_attn, "to_k": n_attn}
    seen = {kind: 0 for kind in kinds}
    for call, kind, raw, final in rec.values:
        seen[kind] += 1
        assert torch.equal(final[0], raw[0])  # the source row keeps its own values
        if call < kinds[kind]:
            for r in range(1, 1 + 2 * k):  # uncond and cond rows of every target
                assert torch.equal(final[r], raw[0])
            assert (raw[1:] - raw[0]).abs().max() > 1e-4  # there was something to replace
        else:
            assert torch.equal(final, raw)
    # every step passes each hooked module: conv2 once, to_q/to_k once per attention block (2)
    assert seen == {"conv2": start, "to_q": 2 * start, "to_k": 2 * start}


def test_guided_variant_injects_per_guidance_half(tiny, ef_inversion, monkeypatch):
    """``source_branch: guided``: [uncond: source, targets; cond: source, targets], the source
    rows conditioned on the null text / the source prompt, each half fed by its own source row."""
    k, start = len(TARGETS), N - SKIP
    editor = pnp(source_branch="guided", negative_prompt="")
    rec, _ = _record(tiny, monkeypatch, editor, ef_inversion)
    empty, source = tiny.encode_prompt([""]).embeds[0], tiny.encode_prompt([SOURCE]).embeds[0]
    for _sample, emb in rec.calls:
        assert torch.equal(emb[0], empty) and torch.equal(emb[1 + k], source)
    for call, kind, raw, final in rec.values:
        if call < {"conv2": int(0.8 * start)}.get(kind, int(0.5 * start)):
            for half in (0, 1 + k):
                assert all(torch.equal(final[half + r], raw[half]) for r in range(1, 1 + k))
            assert not torch.equal(raw[0], raw[1 + k])  # the halves' sources differ


def test_empty_prompt_source_regenerated_with_per_step_unconditional(tiny, photo_x0, monkeypatch):
    """A null-text inversion's source row is regenerated with its own per-step unconditional
    embedding in an extra row; the injected row stays the empty prompt's."""
    n = 4
    inv = INVERTERS.build({"name": "null_text", "num_inner_steps": 1}).invert(
        tiny, photo_x0, SOURCE, num_steps=n, skip=0
    )
    rec, _ = _record(tiny, monkeypatch, pnp(source_latents="regenerate"), inv, TARGETS[:1], 0)
    empty = tiny.encode_prompt([""]).embeds[0]
    source = tiny.encode_prompt([SOURCE]).embeds[0]
    assert len(rec.calls) == n
    for j, (_sample, emb) in enumerate(rec.calls):  # [source "", source u_i, source prompt, target u, c]
        assert emb.shape[0] == 5 and torch.equal(emb[0], empty)
        assert torch.equal(emb[1], inv.uncond_embeddings.embeds[n - j - 1, 0]) and torch.equal(emb[2], source)
    _call, _kind, raw, final = rec.values[0]  # conv2 at the first step
    assert torch.equal(final[3], raw[0]) and torch.equal(final[4], raw[0])
    assert torch.equal(final[:3], raw[:3])  # the source's own rows are left alone


def test_edict_source_row_follows_its_half_steps(tiny, photo_x0, monkeypatch):
    """EDICT evaluates the network twice per step. Following the stored (x_i, y_i), the source
    row's first evaluation sees the stored state and its second EDICT's half step from it,
    driven by the inversion's guided prediction (not the empty-prompt row's)."""
    from plugins.inverters.edict import denoise_step, x_first

    n = 4
    inv = INVERTERS.build({"name": "edict"}).invert(tiny, photo_x0, SOURCE, num_steps=n, skip=0)
    rec, _ = _record(tiny, monkeypatch, pnp(), inv, TARGETS[:1], 0)
    assert len(rec.calls) == 2 * n
    schedule = tiny.schedule(n, 0.0)
    cond, null = tiny.encode_prompt([SOURCE]), tiny.null_condition()
    for j in range(n):
        i = n - j
        x_i, y_i = inv.xts[i].double(), inv.coupled[i].double()
        first, other = (y_i, x_i) if x_first(n - i) else (x_i, y_i)  # evaluated first, updated first
        t = int(schedule.timesteps[i - 1])
        eps = tiny.predict_noise(first.float(), t, cond, null, inv.guidance_scale).double()
        half = denoise_step(schedule, i, other, eps).float()
        assert torch.equal(rec.calls[2 * j][0][0], first[0].float())
        assert (rec.calls[2 * j + 1][0][0] - half[0]).abs().max() <= 1e-4
