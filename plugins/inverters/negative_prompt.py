"""Negative-prompt inversion (Miyake et al., 2023): null-text inversion without optimisation.

The pivot is the same DDIM inversion at guidance 1 with the source prompt as null-text
inversion's; instead of optimised per-step conditionings, the source prompt's own conditioning
(the whole of it, every field) is the unconditional conditioning of every step at edit time
(``Inversion.uncond_embeddings`` with one entry). Regenerating with the source prompt then gives
ε̂_c + w (ε̂_c - ε̂_c) = ε̂_c at any guidance w, i.e. DDIM sampling from the pivot without
guidance; a target prompt c' gives ε̂(source) + w (ε̂(c') - ε̂(source)). Network evaluations: n (the pivot), nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from framework.inversion import Inverter
from framework.registry import INVERTERS
from plugins.inverters.ddim import ddim_inversion_sequence

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class NegativePromptOptions:
    """Options of ``negative_prompt``."""

    # guidance of the DDIM pivot on the source prompt (the method's: 1); the source row of an
    # edit is unaffected by it (its unconditional embedding is its prompt)
    guidance_scale: float = 1.0
    # the scheduler's steps_offset for this inversion and its edits: null keeps the backbone's
    # (SD: 1, 981 ... 1 for 50 steps); 0 gives 980 ... 0 with a first step that changes nothing,
    # as PnPInversion's DDIMSchedulerDev
    steps_offset: int | None = None


@INVERTERS.register("negative_prompt")
class NegativePromptInversion(Inverter):
    """DDIM pivot; the source prompt's embedding as the unconditional one when editing."""

    Options = NegativePromptOptions

    stochastic = False

    def trajectory(self, backbone: Backbone, x0, schedule, n, cond, uncond, guidance_scale, generator):
        """The DDIM pivot and the source conditioning (one stacked entry, every field (1, B, ...))
        as every step's unconditional one."""
        pivot = ddim_inversion_sequence(
            backbone, x0, schedule, n, cond, uncond, guidance_scale, desc="negative-prompt pivot"
        )
        if cond is None:  # an unconditional model: plain DDIM inversion
            return pivot, None
        return pivot, None, {"uncond_embeddings": type(cond).stack([cond]).clone()}
