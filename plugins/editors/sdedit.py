"""SDEdit (Meng et al., ICLR 2022), the paper's baseline for color strokes (Figure 8).

The (edited) input is noised to a chosen step with fresh noise,
x_i = sqrt(ᾱ_i)·x0' + sqrt(1-ᾱ_i)·ε, and denoised with fresh DDPM noise (η = 1 by default).
x0' is the inverted image with the color strokes, if any, painted directly onto the image
(for latent models: decode, paint, encode). Only x0 of the inversion is used; its noise maps
are not. The starting step is ``start_step`` if given, else round(strength·N) if ``strength``
is given, else N - skip, like the other editors. It runs the one reverse loop with a
fresh-noise DDPM step rule of its own η, whatever the inversion's rule and conditioning. Higher
start steps follow the strokes more and the input less: the fidelity/realism trade-off that
noise-space color strokes avoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from framework.errors import InputError
from framework.inversion import Inversion
from framework.random import randn
from framework.registry import EDITORS
from framework.sampling import (
    DDPMRule,
    Guidance,
    check_single_image,
    denoise,
    expand_rows,
    prompt_free_conditioning,
)
from framework.schema import DEFAULT_SKIP
from plugins.editors.color_strokes import StrokesEditor, image_size, load_stroke_files

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class SDEditOptions:
    """Options of the ``sdedit`` editor."""

    strength: float | None = None  # fraction of the N steps to noise to, in (0, 1]
    start_step: int | None = None  # or the step itself (1..N); neither: N - skip
    eta: float = 1.0  # stochasticity of the denoising (1: DDPM)
    strokes: str | None = None  # optional color strokes, as for color_strokes
    mask: str | None = None
    colors: str | None = None
    guidance_scale: float | None = None  # conditional backbones; None: the inversion's


def paint_strokes(backbone: Backbone, x0: Tensor, mask: Tensor, colors: Tensor) -> Tensor:
    """x0 (1, C, h, w) with the strokes painted onto its image: encode(B⊙M + (1-B)⊙decode(x0))."""
    image = backbone.decode(x0).to(x0.device)
    mask, colors = mask.to(x0.device), colors.to(x0.device)
    if image.shape[-2:] != mask.shape[-2:]:
        raise InputError(f"the strokes are {tuple(mask.shape[-2:])} but the image is {tuple(image.shape[-2:])}")
    return backbone.encode_image(mask * colors + (1 - mask) * image).float()


@EDITORS.register("sdedit")
class SDEditEditor(StrokesEditor):
    """Noise the (stroke-painted) input to a step and denoise it with fresh noise."""

    Options = SDEditOptions
    #: only the inversion's x0 (the encoded input), its step count and guidance are read
    needs_inversion = False

    def first_step(self, num_steps: int, skip: int) -> int:
        """The step SDEdit noises to, in 1..N."""
        o = self.options
        if o.start_step is not None and o.strength is not None:
            raise InputError("give sdedit either strength or start_step, not both")
        if o.start_step is not None:
            step = int(o.start_step)
            what = f"start_step={o.start_step}"
        elif o.strength is not None:
            if not 0 < o.strength <= 1:
                raise InputError(f"sdedit strength must be in (0, 1], got {o.strength}")
            step = max(1, round(o.strength * num_steps))
            what = f"strength={o.strength}"
        else:
            step = num_steps - skip
            what = f"num_steps - skip = {step}"
        if not 1 <= step <= num_steps:
            raise InputError(f"sdedit {what} gives step {step}; accepted: 1..{num_steps}")
        return step

    def edited_x0(self, backbone: Backbone, x0: Tensor) -> Tensor:
        """The input x0 (1, C, h, w) with the strokes painted on, or as it is without strokes."""
        o = self.options
        if self.strokes is not None:
            mask, colors = self.strokes
        elif o.strokes is not None or o.mask is not None or o.colors is not None:
            mask, colors = load_stroke_files(image_size(backbone, x0), o.strokes, o.mask, o.colors)
        else:
            return x0
        return paint_strokes(backbone, x0, mask, colors)

    @torch.no_grad()
    def edit(
        self,
        backbone: Backbone,
        inversion: Inversion,
        source_prompt: str,
        target_prompts: Sequence[str],
        *,
        skip: int = DEFAULT_SKIP,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(K, C, h, w) latents, one per target prompt (1 if none); each row its own noise."""
        check_single_image(inversion)
        n = inversion.num_steps
        start = self.first_step(n, skip)
        schedule = backbone.schedule(n, self.options.eta)
        g = inversion.guidance_scale if self.options.guidance_scale is None else self.options.guidance_scale
        k, cond, uncond = prompt_free_conditioning(backbone, target_prompts, g)
        x0 = self.edited_x0(backbone, inversion.x0.to(backbone.device))
        x0 = expand_rows(x0, k)
        x_start = schedule.add_noise(x0, randn(x0.shape, generator, x0.device), start)
        # SDEdit uses only x0 of the inversion: its own fresh-noise DDPM rule and the null text
        rule = DDPMRule(schedule, x_start.float(), None, generator)
        return denoise(backbone, rule, start, Guidance(cond, uncond, g), desc="sdedit")
