"""The conditioning object: row operations on every field, and a conditioning with extra fields
(as SDXL's pooled embeddings and added time ids) running through the loop unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from framework.backbone import Backbone
from framework.conditioning import Conditioning, broadcast_rows, cat_rows, num_rows, replace_rows, tile
from framework.errors import InputError


@dataclass(frozen=True)
class PooledConditioning(Conditioning):
    pooled: Tensor  # (K, P)
    time_ids: Tensor  # (K, 6)


def _cond(k: int, seed: int = 0) -> PooledConditioning:
    g = torch.Generator().manual_seed(seed)
    return PooledConditioning(torch.randn(k, 5, 8, generator=g), torch.randn(k, 3, generator=g),
                              torch.arange(6.0).repeat(k, 1) + seed)


def test_row_operations_apply_to_every_field() -> None:
    c = _cond(3)
    assert len(c) == 3 and num_rows(c) == 3 and c.dtype == torch.float32
    r = c.rows([2, 0])
    assert isinstance(r, PooledConditioning)
    assert torch.equal(r.embeds, c.embeds[[2, 0]]) and torch.equal(r.pooled, c.pooled[[2, 0]])
    assert torch.equal(c.rows(1).time_ids, c.time_ids[1:2])
    rep = c.repeat(2)
    assert len(rep) == 6 and torch.equal(rep.pooled[3:], c.pooled)
    both = Conditioning.cat([c, _cond(2, seed=1)])
    assert isinstance(both, PooledConditioning) and len(both) == 5
    assert torch.equal(both.time_ids[3], torch.arange(6.0) + 1)
    one = c.rows(0)
    assert len(one.expand(4)) == 4 and torch.equal(one.expand(4).pooled[3], c.pooled[0])
    with pytest.raises(InputError, match="3 rows for a batch of 4"):
        c.expand(4)
    swapped = c.replace_rows(slice(1, 3), _cond(1, seed=2))
    assert torch.equal(swapped.embeds[0], c.embeds[0]) and torch.equal(swapped.embeds[2], _cond(1, seed=2).embeds[0])
    assert torch.equal(c.embeds, _cond(3).embeds)  # the original is untouched
    assert c.to(dtype=torch.float64).pooled.dtype == torch.float64
    assert c.clone().embeds is not c.embeds


def test_field_by_field_arithmetic_stacks_and_learnable_fields() -> None:
    a, b = _cond(3), _cond(3, seed=1)
    diff = a.zip_map(b, torch.sub)
    assert isinstance(diff, PooledConditioning)
    assert torch.equal(diff.pooled, a.pooled - b.pooled) and torch.equal(diff.time_ids, a.time_ids - b.time_ids)
    assert torch.equal(a.zip_map(b.rows(0), torch.add).embeds, a.embeds + b.embeds[:1])  # rows broadcast
    with pytest.raises(InputError, match="cannot combine"):
        a.zip_map(Conditioning(a.embeds), torch.add)
    assert torch.equal(a.sum_rows().pooled, a.pooled.sum(0, keepdim=True))
    assert torch.equal(a.mean_rows().embeds, a.embeds.mean(0, keepdim=True)) and len(a.mean_rows()) == 1
    assert a.equal(_cond(3)) and not a.equal(b) and not a.equal(Conditioning(a.embeds)) and not a.equal(a.embeds)
    # a stack over steps: entry s is the conditioning s, every field
    stacked = PooledConditioning.stack([a, b])
    assert len(stacked) == 2 and stacked.pooled.shape == (2, 3, 3)
    assert stacked.at(1).equal(b) and stacked.at(0).equal(a)
    # the learnable fields: leaves that require grad; the class declares which
    assert PooledConditioning.learnable == ("embeds",)
    leaves = a.learnable_leaves()
    assert list(leaves) == ["embeds"] and leaves["embeds"].is_leaf and leaves["embeds"].requires_grad
    assert leaves["embeds"].data_ptr() != a.embeds.data_ptr()
    back = a.with_tensors(leaves)
    assert back.embeds is leaves["embeds"] and back.pooled is a.pooled

    @dataclass(frozen=True)
    class Broken(PooledConditioning):
        learnable = ("embeds", "missing")

    with pytest.raises(TypeError, match="missing"):
        Broken(a.embeds, a.pooled, a.time_ids).learnable_leaves()


def test_the_row_functions_on_plain_tensors_are_the_tensor_operations() -> None:
    x = torch.randn(1, 5, 8)
    y = torch.randn(3, 5, 8)
    assert broadcast_rows(None, 3) is None and broadcast_rows(y, 3) is y
    assert torch.equal(broadcast_rows(x, 3), x.expand(3, 5, 8))
    assert torch.equal(tile(y, 2, 3), y.repeat(2, 1, 1)) and tile(x, 2, 3) is x and tile(y, 1, 3) is y
    assert torch.equal(cat_rows([x, y]), torch.cat([x, y]))
    out = replace_rows(x, slice(0, 1), torch.zeros(1, 5, 8), 3)
    assert torch.equal(out[0], torch.zeros(5, 8)) and torch.equal(out[1:], x.expand(2, 5, 8))
    c = _cond(3)
    assert torch.equal(tile(c, 2, 3).pooled, c.pooled.repeat(2, 1))
    assert torch.equal(cat_rows([c, c]).time_ids, torch.cat([c.time_ids, c.time_ids]))


class PooledToy(Backbone):
    """A network-free backbone whose conditioning has extra fields: ε̂ = x·mean(embeds) + pooled."""

    resolution = 4
    size_multiple = 1

    def __init__(self) -> None:
        from diffusers import DDIMScheduler

        super().__init__()
        self.set_scheduler(DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1,
                                         set_alpha_to_one=False, clip_sample=False))
        self.seen: list[int] = []

    def encode_image(self, images: Tensor) -> Tensor:
        return images.float()

    def decode(self, x0: Tensor) -> Tensor:
        return x0

    def encode_prompt(self, prompts: Sequence[str]) -> PooledConditioning:
        rows = [_cond(1, seed=len(p)) for p in prompts]
        return PooledConditioning.cat(rows)

    def model_output(self, x_t: Tensor, t, cond) -> Tensor:
        assert isinstance(cond, PooledConditioning) and len(cond) == x_t.shape[0]
        self.seen.append(len(cond))
        scale = cond.embeds.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return 0.1 * x_t * scale + cond.pooled[:, :1].reshape(-1, 1, 1, 1)


def test_a_conditioning_with_extra_fields_runs_through_the_loop() -> None:
    """Inversion (batched over timesteps too), guidance and an edit need no change for the fields."""
    from framework.registry import EDITORS, INVERTERS

    bb = PooledToy()
    x0 = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for batch in (1, 3):
        inv = INVERTERS.build({"name": "ddpm_edit_friendly", "timestep_batch": batch}).invert(
            bb, x0, "a cat", num_steps=6, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(inv.zs).all()
    out = EDITORS.build({"name": "text", "guidance_scale": 4.0}).edit(bb, inv, "a cat", ["a dog", "a zebra"], skip=0)
    assert out.shape == (2, 3, 4, 4) and torch.isfinite(out).all()
    assert 4 in bb.seen and 6 in bb.seen  # guided passes: 2 branches x 2 rows; 3 steps x 2 branches
    back = EDITORS.build({"name": "text", "guidance_scale": 3.5}).edit(bb, inv, "a cat", ["a cat"], skip=0)
    torch.testing.assert_close(back, x0, atol=1e-4, rtol=1e-4)
