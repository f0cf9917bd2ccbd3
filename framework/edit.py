"""One image, one inversion, all its targets: the functions the CLI, the runner and the demo share.

``invert_and_edit`` runs both phases; ``invert_image`` and ``edit_inversion`` run one each, for
callers that keep an inversion and edit it again (the web demo).
"""

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


@dataclass
class InversionRun:
    """One inversion with what it cost (the first phase of :func:`invert_and_edit`)."""

    inversion: Inversion
    seconds: float
    nfe: int


@dataclass
class EditRun:
    """Edited images of one inversion for K targets (the second phase)."""

    images: Tensor  # (K, 3, H, W) in [-1, 1]
    latents: Tensor  # (K, C, h, w)
    seconds: float
    nfe: int


def invert_image(
    backbone: Any,
    inverter: Any,
    image: Tensor,
    source_prompt: str,
    *,
    num_steps: int,
    skip: int,
    seed: int,
) -> InversionRun:
    """Encode ``image`` (1, 3, H, W) and invert it once under ``source_prompt``."""
    inv_gen, _ = seeds_for(seed)
    with torch.no_grad():
        x0 = backbone.encode_image(image.to(backbone.device))
    _sync(backbone.device)
    start = time.perf_counter()
    nfe0 = backbone.nfe
    inversion = inverter.invert(
        backbone, x0, source_prompt, num_steps=num_steps, skip=skip, generator=inv_gen
    )
    _sync(backbone.device)
    return InversionRun(inversion, time.perf_counter() - start, backbone.nfe - nfe0)


def edit_inversion(
    backbone: Any,
    editor: Any,
    inversion: Inversion,
    source_prompt: str,
    target_prompts: Sequence[str],
    *,
    skip: int,
    seed: int,
) -> EditRun:
    """Edit an inversion toward every target and decode: (K, 3, H, W) images in [-1, 1]."""
    _, edit_gen = seeds_for(seed)
    start = time.perf_counter()
    nfe0 = backbone.nfe
    latents = editor.edit(
        backbone, inversion, source_prompt, list(target_prompts), skip=skip, generator=edit_gen
    )
    _sync(backbone.device)
    seconds = time.perf_counter() - start
    nfe = backbone.nfe - nfe0
    with torch.no_grad():
        images = backbone.decode(latents)
    return EditRun(images, latents, seconds, nfe)


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
    inv = invert_image(backbone, inverter, image, source_prompt, num_steps=num_steps, skip=skip, seed=seed)
    edit = edit_inversion(
        backbone, editor, inv.inversion, source_prompt, target_prompts, skip=skip, seed=seed
    )
    return EditResult(
        edit.images, edit.latents, inv.inversion, inv.seconds, edit.seconds, inv.nfe, edit.nfe
    )
