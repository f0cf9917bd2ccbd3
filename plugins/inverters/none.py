"""No inversion: the encoded image alone, for editors that start from x0 (SDEdit, FlowEdit).

``none`` runs no network: its :class:`~framework.inversion.Inversion` holds x0 (``xts`` of one
step), the schedule's timesteps and the settings an editor may read from an inversion (step
count, skip, the source prompt, ``guidance_scale``), with ``encoded_only`` set. Editors that
regenerate from a trajectory or from noise maps (text, Prompt-to-Prompt, shift, color strokes,
...) refuse it with one error naming what to use instead.

``guidance_scale`` is carried for editors that take the inversion's guidance where they are not
given their own (SDEdit's ``guidance_scale: null``); its default, 3.5, is the edit-friendly
inverter's, so that SDEdit gives the same result after either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from framework.inversion import Inversion, Inverter, as_batch, as_prompts
from framework.registry import INVERTERS
from framework.schema import DEFAULT_NUM_STEPS

if TYPE_CHECKING:
    from torch import Tensor

    from framework.backbone import Backbone


@dataclass
class NoneOptions:
    """Options of ``none``."""

    # the guidance that editors taking the inversion's (SDEdit without its own) use
    guidance_scale: float = 3.5


@INVERTERS.register("none")
class NoInversion(Inverter):
    """The encoded image only: 0 network evaluations."""

    Options = NoneOptions

    stochastic = False
    encodes_only = True

    def invert(
        self,
        backbone: Backbone,
        x0: Tensor,
        source_prompt: str | Sequence[str],
        *,
        num_steps: int = DEFAULT_NUM_STEPS,
        skip: int = 0,
        generator: torch.Generator | None = None,
    ) -> Inversion:
        """x0 (B, C, h, w) as an :class:`Inversion` of ``num_steps`` steps with nothing computed."""
        from framework.schedule import check_steps

        check_steps(num_steps, skip)
        x0 = as_batch(x0, backbone.device)
        prompts = as_prompts(source_prompt, x0.shape[0])
        schedule = backbone.schedule(num_steps, 0.0)
        xts, zs = self.trajectory(backbone, x0, schedule, 0, None, None, 1.0, generator)
        return Inversion(
            xts=xts,
            zs=zs,
            timesteps=schedule.timesteps,
            num_steps=num_steps,
            skip=skip,
            eta=0.0,
            method=self.registered_name,
            source_prompt=prompts,
            guidance_scale=float(self.options.guidance_scale),
            nfe=0,
            encoded_only=True,
        )

    def trajectory(self, backbone: Backbone, x0, schedule, n, cond, uncond, guidance_scale, generator):
        """x0 alone, (1, B, C, h, w); no noise maps."""
        return x0.float().clone()[None], None
