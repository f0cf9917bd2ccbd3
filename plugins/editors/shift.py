"""Image shifting in the noise space (section 3.2, Figure 7 of the paper).

x at the edit's first step (x_T for skip 0) and every noise map z_i are translated by
(dx, dy) pixels of x0's grid (latent pixels for latent models; dx > 0 moves the content right,
dy > 0 down), and the image is regenerated. Edit-friendly maps imprint the image, so the
regenerated image is the shifted input with little loss of structure; native maps do not.

Border policy (option ``border``) for the strip the shift uncovers:

- ``noise`` (default): fresh N(0, 1) noise from the edit's generator in every noise map; in
  x_start, sqrt(1-ᾱ)·N(0, 1), the noise part of x at that step (x_T is nearly pure noise).
- ``reflect``: mirror the content next to the border (needs |dx| < w and |dy| < h).
- ``wrap``: circular shift (what leaves one side enters the other).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from framework.errors import InputError
from framework.inversion import Inversion
from framework.random import randn
from framework.registry import EDITORS
from framework.sampling import (
    Editor,
    check_single_image,
    denoise,
    inversion_guidance,
    prompt_free_conditioning,
)
from framework.schema import DEFAULT_SKIP

if TYPE_CHECKING:
    from framework.backbone import Backbone

BORDERS = ("noise", "reflect", "wrap")


@dataclass
class ShiftOptions:
    """Options of the ``shift`` editor."""

    dx: int = 0  # pixels of x0's grid (latent pixels for latent models), > 0: right
    dy: int = 0  # > 0: down
    border: str = "noise"  # noise | reflect | wrap
    guidance_scale: float | None = None  # conditional backbones; None: the inversion's


def shift_tensor(x: Tensor, dx: int, dy: int, border: str, fill: Tensor | None = None) -> Tensor:
    """Translate x (..., h, w) by (dx, dy); the uncovered strip per ``border``.

    ``fill`` (same shape as x) supplies the uncovered pixels for the ``noise`` policy.
    """
    h, w = x.shape[-2:]
    if dx == 0 and dy == 0:
        return x.clone()
    if border == "wrap":
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    if abs(dx) >= w or abs(dy) >= h:
        raise InputError(f"shift ({dx}, {dy}) is not smaller than the {w}x{h} grid; accepted: |dx| < {w}, |dy| < {h}")
    if border == "reflect":
        lead = x.shape[:-2]
        flat = x.reshape(-1, 1, h, w)
        pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
        padded = F.pad(flat, pad, mode="reflect")
        top, left = max(-dy, 0), max(-dx, 0)
        return padded[..., top : top + h, left : left + w].reshape(*lead, h, w).clone()
    if border == "noise":
        if fill is None:
            raise ValueError("the noise border policy needs a fill tensor")
        out = fill.clone()
        ys = slice(max(dy, 0), h + min(dy, 0))
        xs = slice(max(dx, 0), w + min(dx, 0))
        ys_src = slice(max(-dy, 0), h + min(-dy, 0))
        xs_src = slice(max(-dx, 0), w + min(-dx, 0))
        out[..., ys, xs] = x[..., ys_src, xs_src]
        return out
    raise InputError(f"unknown border policy {border!r}; accepted: {', '.join(BORDERS)}")


@EDITORS.register("shift")
class ShiftEditor(Editor):
    """Translate x_start and all noise maps by (dx, dy) and regenerate."""

    Options = ShiftOptions
    needs_prompts = False

    def shift_maps(
        self, x_start: Tensor, zs: Tensor | None, noise_std: float, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        """Shift x_start (B, C, h, w) and zs (n, B, C, h, w) or None (a DDIM inversion); the
        ``noise`` border fills x_start with noise_std·N(0, 1) and the maps with N(0, 1)."""
        o = self.options
        if o.border not in BORDERS:
            raise InputError(f"unknown border policy {o.border!r}; accepted: {', '.join(BORDERS)}")
        fill_x, zs = self._shift(x_start, zs, noise_std, generator)
        return shift_tensor(x_start, o.dx, o.dy, o.border, fill_x), zs

    def _shift(
        self, x_start: Tensor, zs: Tensor | None, noise_std: float, generator: torch.Generator | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """(the fill of x_start's uncovered strip or None, the shifted maps or None): the draws
        of :meth:`shift_maps`, x_start's strip first."""
        o = self.options
        fill_x = fill_z = None
        if o.border == "noise" and (o.dx or o.dy):
            fill_x = noise_std * randn(x_start.shape, generator, x_start.device)
            fill_z = None if zs is None else randn(zs.shape, generator, zs.device)
        return fill_x, None if zs is None else shift_tensor(zs, o.dx, o.dy, o.border, fill_z)

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
        """(K, C, h, w) latents of the shifted image, one per target prompt (1 if none)."""
        check_single_image(inversion)
        start = inversion.check_skip(skip)
        o = self.options
        schedule = inversion.schedule(backbone)
        g = inversion.guidance_scale if o.guidance_scale is None else o.guidance_scale
        k, cond, _ = prompt_free_conditioning(backbone, target_prompts, g)
        x_start = inversion.x_at(start).to(backbone.device)
        zs = None if inversion.zs is None else inversion.zs[:start].to(backbone.device)
        noise_std = schedule.noise_level(start)[1]
        # A deterministic (DDIM) inversion has no maps: only x_start is shifted.
        # (EDICT's two sequences are shifted alike, with the same strip)
        if o.border not in BORDERS:
            raise InputError(f"unknown border policy {o.border!r}; accepted: {', '.join(BORDERS)}")
        fill, zs = self._shift(x_start, zs, noise_std, generator)
        rule = inversion.regeneration(
            backbone, start, k, generator=generator, zs=zs,
            transform=lambda x: shift_tensor(x, o.dx, o.dy, o.border, fill),
        )
        guidance = inversion_guidance(backbone, inversion, cond, g if cond is not None else 1.0)
        return denoise(backbone, rule, start, guidance, desc="shift")
