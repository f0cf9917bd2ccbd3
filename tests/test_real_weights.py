"""Checks on the paper's model (Stable Diffusion 1.4) when its weights are present locally.

Skipped when the weights are not in the Hugging Face cache (tests never download) or when no
GPU is available (100 SD steps on 2 CPU cores would take too long for the suite).
"""

from __future__ import annotations

import pytest
import torch

MODEL = "CompVis/stable-diffusion-v1-4"


def _have_weights() -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(MODEL, "unet/config.json")
        return isinstance(found, str)
    except Exception:
        return False


pytestmark = [
    pytest.mark.weights,
    pytest.mark.skipif(not _have_weights(), reason=f"{MODEL} weights are not in the local cache"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]


def test_sd14_exact_reconstruction_and_timesteps(photo_path) -> None:
    from framework.backbone import load_backbone
    from framework.images import load_image_tensor
    from framework.registry import EDITORS, INVERTERS

    sd = load_backbone("sd14", local_files_only=True)
    assert sd.resolution == 512 and sd.timesteps(100)[:2].tolist() == [1, 11]
    x0 = sd.encode_image(load_image_tensor(photo_path, 512, sd.size_multiple))
    inv = INVERTERS.build("ddpm_edit_friendly").invert(
        sd, x0, "a photo of a flower", num_steps=100, generator=torch.Generator().manual_seed(0)
    )
    out = EDITORS.build({"name": "text", "guidance_scale": 3.5}).edit(
        sd, inv, "a photo of a flower", ["a photo of a flower"], skip=0
    )
    assert (out - x0).abs().max() <= 1e-4
    assert inv.zs.flatten(1).var(1).mean() > 1
