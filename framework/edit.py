"""One image, one inversion, all its targets: the functions the CLI, the runner and the demo share.

``invert_and_edit`` runs both phases; ``invert_image`` (or ``invert_latent`` on an encoded image)
and ``edit_inversion`` run one each, for callers that keep an inversion and edit it again (the web
demo) or share one inversion among several editors (the runner).

This module is the one place where what an edit costs is measured: :func:`measure_cost` gives
the wall seconds (after the device's queued work, CUDA being asynchronous) and the network
evaluations (``backbone.nfe``) of each phase. Encoding the image and decoding the edits are not
part of either phase.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from framework.errors import InputError
from framework.inversion import Inversion
from framework.prompts import check_edit_prompts
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
class Cost:
    """What a block of work cost: wall seconds and network evaluations."""

    seconds: float = 0.0
    nfe: int = 0


@contextmanager
def measure_cost(backbone: Any) -> Iterator[Cost]:
    """Measure the block's wall time and ``backbone.nfe`` increase into the yielded :class:`Cost`.

    On CUDA the device is synchronized before the clock starts and before it stops, so queued
    kernels are counted in the phase that launched them. The cost is filled in only when the
    block finishes without an exception.
    """
    device = torch.device(backbone.device)
    cost = Cost()
    _sync(device)
    nfe0 = backbone.nfe
    start = time.perf_counter()
    yield cost
    _sync(device)
    cost.seconds = time.perf_counter() - start
    cost.nfe = backbone.nfe - nfe0


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


def invert_latent(
    backbone: Any,
    inverter: Any,
    x0: Tensor,
    source_prompt: str,
    *,
    num_steps: int,
    skip: int,
    seed: int,
) -> InversionRun:
    """Invert an encoded image x0 (1, C, h, w) once under ``source_prompt``, measuring its cost."""
    inv_gen, _ = seeds_for(seed)
    with measure_cost(backbone) as cost:
        inversion = inverter.invert(
            backbone, x0, source_prompt, num_steps=num_steps, skip=skip, generator=inv_gen
        )
    return InversionRun(inversion, cost.seconds, cost.nfe)


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
    """Encode ``image`` (1, 3, H, W) in [-1, 1] and invert it once under ``source_prompt``."""
    with torch.no_grad():
        x0 = backbone.encode_image(image.to(backbone.device))
    return invert_latent(
        backbone, inverter, x0, source_prompt, num_steps=num_steps, skip=skip, seed=seed
    )


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
    with measure_cost(backbone) as cost:
        latents = editor.edit(
            backbone, inversion, source_prompt, list(target_prompts), skip=skip, generator=edit_gen
        )
    with torch.no_grad():
        images = backbone.decode(latents)
    return EditRun(images, latents, cost.seconds, cost.nfe)


def check_inversion_needed(inverter: Any, editor: Any) -> None:
    """Refuse an inverter that only encodes the image (``none``) for an editor that reads an
    inversion's trajectory or noise maps, before anything runs."""
    if getattr(inverter, "encodes_only", False) and getattr(editor, "needs_inversion", True):
        name = getattr(editor, "registered_name", type(editor).__name__)
        raise InputError(
            f"the {name} editor needs an inversion's trajectory or noise maps, but the inverter "
            f"{getattr(inverter, 'registered_name', 'none')} only encodes the image; use an inverter "
            "(ddpm_edit_friendly, ddim, ...) or an editor that needs no inversion (sdedit, flowedit)"
        )


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
    """Encode ``image`` (1, 3, H, W), invert it once, edit it toward every target, decode.

    Before anything runs, every prompt (the source, the targets, the plugin options that are
    prompts) is checked against the backbone's text encoder: one it cannot take is refused
    (:class:`~framework.errors.InputError`, or :class:`~framework.errors.ConfigError` for an
    option), and words a closed vocabulary has never seen are named in a warning."""
    check_conditional(editor, backbone)  # before the inversion, not after it
    check_inversion_needed(inverter, editor)
    rules = backbone.prompt_rules() if hasattr(backbone, "prompt_rules") else None
    check_edit_prompts(rules, source_prompt, target_prompts, (inverter, editor))
    inv = invert_image(backbone, inverter, image, source_prompt, num_steps=num_steps, skip=skip, seed=seed)
    edit = edit_inversion(
        backbone, editor, inv.inversion, source_prompt, target_prompts, skip=skip, seed=seed
    )
    return EditResult(
        edit.images, edit.latents, inv.inversion, inv.seconds, edit.seconds, inv.nfe, edit.nfe
    )
