"""One image, one inversion, all its targets: the function the CLI and the runner share."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from framework.inversion import Inversion
from framework.random import make_generator
from framework.sampling import check_conditional


@dataclass
class EditResult:
    """Edited images of one image for K targets, with what they cost."""

    images: Tensor  # (K, 3, H, W) in [-1, 1]
    latents: Tensor  # (K, C, h, w)
    inversion: Inversion
    inversion_seconds: float
    edit_seconds: float
    inversion_nfe: int
    edit_nfe: int


def seeds_for(seed: int) -> tuple[torch.Generator | None, torch.Generator | None]:
    """Independent generators for the inversion and the edit, both derived from ``seed``."""
    return make_generator(seed), make_generator(seed + 7919)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def invert_and_edit(
    backbone: Any,
    inverter: Any,
    editor: Any,
    image: Tensor,
    source_prompt: str,
    target_prompts: Sequence[str],
    *,
    num_steps: int,
    skip: int,
    seed: int,
) -> EditResult:
    """Encode ``image`` (1, 3, H, W), invert it once, edit it toward every target, decode."""
    check_conditional(editor, backbone)  # before the inversion, not after it
    inv_gen, edit_gen = seeds_for(seed)
    with torch.no_grad():
        x0 = backbone.encode_image(image.to(backbone.device))
    _sync(backbone.device)
    start = time.perf_counter()
    nfe0 = backbone.nfe
    inversion = inverter.invert(
        backbone, x0, source_prompt, num_steps=num_steps, skip=skip, generator=inv_gen
    )
    _sync(backbone.device)
    inv_seconds = time.perf_counter() - start
    inv_nfe = backbone.nfe - nfe0
    start = time.perf_counter()
    nfe0 = backbone.nfe
    latents = editor.edit(
        backbone, inversion, source_prompt, list(target_prompts), skip=skip, generator=edit_gen
    )
    _sync(backbone.device)
    edit_seconds = time.perf_counter() - start
    edit_nfe = backbone.nfe - nfe0
    with torch.no_grad():
        images = backbone.decode(latents)
    return EditResult(images, latents, inversion, inv_seconds, edit_seconds, inv_nfe, edit_nfe)
