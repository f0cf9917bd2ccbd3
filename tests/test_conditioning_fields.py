"""A conditioning with more fields than the text encoder's hidden states through every inverter
and editor: the fields come along (row-aligned), null-text optimises the learnable ones, and
the fields that are not learnable stay as encoded.

The backbone is the tiny Stable Diffusion with SDXL's shape of conditioning: besides ``embeds``
a ``pooled`` field (the hidden states' mean over tokens, so it depends on the prompt) that
shifts the UNet's input through a fixed projection, and ``size_ids``, a fixed field (as SDXL's
time ids) that scales that shift.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from framework.conditioning import Conditioning
from framework.errors import InputError
from framework.registry import EDITORS, INVERTERS
from plugins.backbones.tiny import TinyBackbone, TinyOptions

SOURCE = "a photo of a cat"
TARGETS = ["a photo of a dog", "a photo of a tiger"]
NEGATIVE = "a blurry photo"
STEPS = 3


@dataclass(frozen=True)
class PooledConditioning(Conditioning):
    pooled: Tensor  # (K, D): the hidden states' mean over tokens
    size_ids: Tensor  # (K, 2): a fixed field

    learnable = ("embeds", "pooled")


@dataclass(frozen=True)
class HiddenOnlyConditioning(PooledConditioning):
    learnable = ("embeds",)


class PooledTiny(TinyBackbone):
    """The tiny model whose UNet input is shifted by ``size_ids[:, :1] / 16 · pooled @ P``."""

    def __init__(self, cls: type[PooledConditioning] = PooledConditioning) -> None:
        super().__init__(TinyOptions(device="cpu"))
        self.cls = cls
        channels = int(self.unet.config.in_channels)
        width = int(self.text_encoder.config.hidden_size)
        self.projection = 2.0 * torch.randn(width, channels, generator=torch.Generator().manual_seed(7))
        self.known: dict[str, PooledConditioning] = {}  # prompt -> its conditioning, rows checked when set
        self.hits: dict[str, int] = {}
        self.misaligned: list[str] = []

    def encode_prompt(self, prompts: Sequence[str]) -> PooledConditioning:  # type: ignore[override]
        base = super().encode_prompt(prompts)
        size = torch.tensor([[16.0, 24.0]]).repeat(len(base), 1)
        return self.cls(base.embeds, base.embeds.mean(1), size)

    def model_output(self, x_t: Tensor, t: int | Tensor, cond: Conditioning | None) -> Tensor:
        assert isinstance(cond, PooledConditioning) and len(cond) == x_t.shape[0]
        assert cond.pooled.shape == (x_t.shape[0], self.projection.shape[0])
        self._check_rows(cond)
        shift = (cond.pooled.float() @ self.projection) * cond.size_ids[:, :1] / 16
        return super().model_output(x_t + shift[:, :, None, None].to(x_t.dtype), t, cond)

    def _check_rows(self, cond: PooledConditioning) -> None:
        """Every row whose hidden states are a known prompt's carries that prompt's other fields."""
        for r in range(len(cond)):
            for prompt, c in self.known.items():
                if torch.equal(cond.embeds[r], c.embeds[0]):
                    self.hits[prompt] = self.hits.get(prompt, 0) + 1
                    if not (torch.equal(cond.pooled[r], c.pooled[0]) and torch.equal(cond.size_ids[r], c.size_ids[0])):
                        self.misaligned.append(prompt)


@pytest.fixture(scope="module")
def pooled_tiny(_tiny_cache) -> PooledTiny:
    return PooledTiny()


def _strokes(folder, size: int) -> str:
    arr = np.zeros((size, size, 4), dtype=np.uint8)
    arr[size // 8 : size // 2, size // 8 : size // 2] = (20, 40, 230, 255)
    path = folder / "strokes.png"
    Image.fromarray(arr, "RGBA").save(path)
    return str(path)


def _x0(bb: PooledTiny) -> Tensor:
    r = bb.resolution
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, r), torch.linspace(-1, 1, r), indexing="ij")
    return bb.encode_image(torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None])


def test_the_extra_field_changes_the_network_output(pooled_tiny) -> None:
    bb = pooled_tiny
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    c = bb.encode_prompt([SOURCE])
    other = bb.encode_prompt([TARGETS[0]])
    moved = c.with_tensors({"pooled": other.pooled})
    assert (bb.predict_noise(x, 500, c) - bb.predict_noise(x, 500, moved)).abs().max() > 1e-2


def test_every_inverter_and_editor_carries_the_fields(pooled_tiny, tmp_path) -> None:
    bb = pooled_tiny
    x0 = _x0(bb)
    strokes = _strokes(tmp_path, bb.resolution)
    editors = {
        "text": {"guidance_scale": 3.0},
        "prompt_to_prompt": {"blend_words": ["cat"], "equalizer_words": ["dog"], "equalizer_weights": [2.0]},
        "plug_and_play": {"negative_prompt": NEGATIVE},
        "zero_shot": {"cross_attention_guidance": 0.1},
        "shift": {"dx": 1, "dy": 0},
        "color_strokes": {"strokes": strokes, "start_step": 1, "end_step": 2},
        "sdedit": {"strokes": strokes, "strength": 0.5},
        "flowedit": {"n_max": 2},  # a flow-matching editor: refused on this DDPM model
    }
    assert set(editors) == set(EDITORS.names())
    checked = ("text", "prompt_to_prompt", "plug_and_play")  # editors that pass the prompts' rows as encoded
    for iname in INVERTERS.names():
        options = {"num_inner_steps": 2} if iname == "null_text" else {}
        inv = INVERTERS.build({"name": iname, **options}).invert(
            bb, x0, SOURCE, num_steps=STEPS, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(inv.xts).all(), iname
        if iname in ("null_text", "negative_prompt"):
            assert isinstance(inv.uncond_embeddings, PooledConditioning)
        for ename, options in editors.items():
            if ename == "color_strokes" and inv.zs is None:
                continue  # color strokes need noise maps (refused with a message elsewhere)
            if ename == "flowedit" or (iname == "none" and ename != "sdedit"):
                # FlowEdit needs a flow model; `none` keeps only x0, which only SDEdit reads
                with pytest.raises(InputError):
                    EDITORS.build({"name": ename, **options}).edit(bb, inv, SOURCE, TARGETS, skip=0)
                continue
            bb.known = {p: bb.encode_prompt([p]) for p in [SOURCE, *TARGETS, NEGATIVE]} if ename in checked else {}
            bb.hits, bb.misaligned = {}, []
            out = EDITORS.build({"name": ename, **options}).edit(
                bb, inv, SOURCE, TARGETS, skip=0, generator=torch.Generator().manual_seed(2))
            assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all(), (iname, ename)
            assert not bb.misaligned, (iname, ename, bb.misaligned)
            if ename in ("prompt_to_prompt", "plug_and_play"):
                # both targets ran, each with its own pooled embedding and fixed field
                assert all(bb.hits.get(p, 0) > 0 for p in TARGETS), (iname, ename, bb.hits)
    bb.known = {}


def test_null_text_optimises_the_learnable_fields_only(pooled_tiny) -> None:
    bb = pooled_tiny
    x0 = _x0(bb)
    inverter = INVERTERS.build({"name": "null_text", "num_inner_steps": 2})
    inv = inverter.invert(bb, x0, SOURCE, num_steps=STEPS)
    null = bb.null_condition()
    per_step = inv.uncond_embeddings
    assert isinstance(per_step, PooledConditioning) and len(per_step) == STEPS
    for s in range(STEPS):
        u = per_step.at(s)
        assert len(u) == 1 and not u.embeds.requires_grad
        assert (u.embeds - null.embeds).abs().max() > 0
        assert (u.pooled - null.pooled).abs().max() > 0  # the unconditional pooled part was optimised
        assert torch.equal(u.size_ids, null.size_ids)  # not learnable: as encoded
    # the stored conditionings pickle with the inversion's tensors
    buffer = io.BytesIO()
    torch.save(per_step, buffer)
    buffer.seek(0)
    assert per_step.equal(torch.load(buffer, weights_only=False))

    # a conditioning that declares only the hidden states learnable keeps its pooled field
    hidden_only = PooledTiny(HiddenOnlyConditioning)
    inv = inverter.invert(hidden_only, x0, SOURCE, num_steps=STEPS)
    null = hidden_only.null_condition()
    assert isinstance(inv.uncond_embeddings, HiddenOnlyConditioning)
    for s in range(STEPS):
        u = inv.uncond_embeddings.at(s)
        assert (u.embeds - null.embeds).abs().max() > 0 and torch.equal(u.pooled, null.pooled)


def test_negative_prompt_and_zero_shot_work_field_by_field(pooled_tiny) -> None:
    bb = pooled_tiny
    inv = INVERTERS.build({"name": "negative_prompt"}).invert(bb, _x0(bb), SOURCE, num_steps=STEPS)
    assert inv.uncond_embeddings.at(0).equal(bb.encode_prompt([SOURCE]))  # the whole conditioning swapped in
    d = EDITORS.build({"name": "zero_shot"}).directions(bb, SOURCE, TARGETS)
    src, tgt = bb.encode_prompt([SOURCE]), bb.encode_prompt(TARGETS)
    assert isinstance(d, PooledConditioning) and len(d) == 2
    assert torch.equal(d.pooled, tgt.pooled - src.pooled) and torch.equal(d.embeds, tgt.embeds - src.embeds)
    assert not d.size_ids.any()  # the fixed field has no direction
