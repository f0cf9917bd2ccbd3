"""``steps_offset`` of negative-prompt, null-text and EDICT inversion: the timesteps of reference
codes that build their DDIM scheduler without an offset (980 ... 0 for 50 steps where the
backbone's Stable Diffusion scheduler gives 981 ... 1), used by the inversion and by every edit
of it; null keeps the backbone's."""

from __future__ import annotations

import pytest
import torch

from framework.errors import InputError
from framework.registry import EDITORS, INVERTERS

SOURCE = "a photo of a box"


@pytest.fixture(scope="module")
def x0(tiny):
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn((1, 4, 16, 16), generator=g)


def test_default_keeps_the_backbones_timesteps(tiny, x0) -> None:
    for name in ("negative_prompt", "edict", "null_text"):
        inv = INVERTERS.build({"name": name, "num_inner_steps": 0} if name == "null_text" else name)
        out = inv.invert(tiny, x0, SOURCE, num_steps=5, skip=0)
        assert out.timesteps.tolist() == tiny.timesteps(5).tolist()


@pytest.mark.parametrize("name", ["negative_prompt", "edict"])
def test_offset_zero_moves_every_timestep_and_the_first_step_changes_nothing(tiny, x0, name) -> None:
    own = int(tiny.scheduler.config.steps_offset)
    assert own == 1 and float(tiny.final_alpha_cumprod) == float(tiny.alphas_cumprod[0])
    inv = INVERTERS.build({"name": name, "steps_offset": 0}).invert(tiny, x0, SOURCE, num_steps=5, skip=0)
    assert inv.timesteps.tolist() == (tiny.timesteps(5) - 1).tolist() and int(inv.timesteps[0]) == 0
    # step 1 runs from ᾱ_0 to the final ᾱ = ᾱ_0: x_1 = x_0 (EDICT: both sequences)
    torch.testing.assert_close(inv.xts[1].float(), inv.xts[0].float(), atol=1e-6, rtol=0)
    # edits step through the same timesteps: the source prompt at the inversion's guidance
    # reproduces the pivot's DDIM sampling (EDICT: x0 exactly)
    seen = []
    original = tiny.predict_noise

    def spy(x, t, *args, **kwargs):
        seen.append(int(t) if not torch.is_tensor(t) or t.dim() == 0 else int(t.flatten()[0]))
        return original(x, t, *args, **kwargs)

    tiny.predict_noise = spy
    try:
        rec = EDITORS.build({"name": "text", "guidance_scale": inv.guidance_scale}).edit(
            tiny, inv, SOURCE, [SOURCE], skip=0)
    finally:
        del tiny.predict_noise
    assert set(seen) <= set(inv.timesteps.tolist()) and 0 in seen
    if name == "edict":
        torch.testing.assert_close(rec.float(), x0, atol=1e-4, rtol=0)


def test_an_offset_past_the_last_timestep_is_refused(tiny, x0) -> None:
    with pytest.raises(InputError, match="edict.steps_offset=25 puts the last timestep"):
        INVERTERS.build({"name": "edict", "steps_offset": 25}).invert(tiny, x0, SOURCE, num_steps=50, skip=0)
    with pytest.raises(InputError, match="negative_prompt.steps_offset must be null"):
        INVERTERS.build({"name": "negative_prompt", "steps_offset": -1}).invert(tiny, x0, SOURCE, num_steps=5)
