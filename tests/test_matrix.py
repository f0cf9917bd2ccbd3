"""Every inverter with every prompt-driven editor on the tiny model, several targets at once;
the UNet's processors and hooks are as before every edit."""

from __future__ import annotations

import pytest
import torch

from framework.registry import EDITORS, INVERTERS
from plugins.editors.unet_hooks import hook_state

INVERTER_NAMES = ["ddpm_edit_friendly", "cycle_diffusion", "ddim", "null_text", "negative_prompt", "edict"]
#: options that keep the matrix quick (null-text: 3 iterations per step instead of 10)
INVERTER_OPTIONS = {"null_text": {"num_inner_steps": 3}}
EDITOR_CONFIGS = {
    "text": {"name": "text"},
    "prompt_to_prompt": {"name": "prompt_to_prompt"},
    "plug_and_play": {"name": "plug_and_play"},
    "zero_shot": {"name": "zero_shot", "cross_attention_guidance": 0.1},
}
SOURCE = "a photo of a cat"
TARGETS = ["a photo of a dog", "a photo of a tiger"]


@pytest.fixture(scope="module")
def inversions(tiny, photo_x0):
    return {
        name: INVERTERS.build({"name": name, **INVERTER_OPTIONS.get(name, {})}).invert(
            tiny, photo_x0, SOURCE, num_steps=10, skip=2, generator=torch.Generator().manual_seed(0)
        )
        for name in INVERTER_NAMES
    }


@pytest.mark.parametrize("editor_name", list(EDITOR_CONFIGS))
@pytest.mark.parametrize("inverter_name", INVERTER_NAMES)
def test_every_inverter_with_every_editor(inverter_name, editor_name, inversions, tiny) -> None:
    inversion = inversions[inverter_name]
    editor = EDITORS.build(EDITOR_CONFIGS[editor_name])
    before = dict(tiny.unet.attn_processors)
    state = hook_state(tiny.unet)
    out = editor.edit(tiny, inversion, SOURCE, TARGETS, skip=2, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 1e-5  # the two targets differ
    after = tiny.unet.attn_processors
    assert all(after[k] is v for k, v in before.items())  # the backbone is left as found
    assert hook_state(tiny.unet) == state
    if inversion.zs is None:  # deterministic inversions give deterministic edits
        again = editor.edit(tiny, inversion, SOURCE, TARGETS, skip=2, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(again, out)
