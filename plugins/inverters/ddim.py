"""Deterministic DDIM inversion (η = 0), the approximate inversion of Song et al. (2021).

Step i runs the DDIM update backwards, from x_{i-1} at ᾱ_prev to x_i at ᾱ_i, with the noise
predicted at the *previous* point and the timestep of step i:

    ε   = ε̂(x_{i-1}, t_i)                    (with source CFG when guidance_scale != 1)
    x̂0  = (x_{i-1} - sqrt(1-ᾱ_prev) ε) / sqrt(ᾱ_prev)
    x_i = sqrt(ᾱ_i) x̂0 + sqrt(1-ᾱ_i) ε

This is exactly diffusers' ``DDIMInverseScheduler`` (timesteps ascending with "leading"
spacing and the model's ``steps_offset``; the first step starts from ``final_alpha_cumprod``,
which that scheduler calls ``initial_alpha_cumprod``, both set by ``set_alpha_to_one``). It is
approximate because DDIM sampling evaluates ε at x_i, not x_{i-1}: the error shrinks as the
number of steps grows, and grows with the guidance scale. (For v-prediction models the
framework converts v to ε with the ᾱ of the timestep the network is given, t_i; diffusers'
inverse scheduler uses the ᾱ of the input's level, ᾱ_prev. The two agree for ε-models.)

"DDIM inversion stopped at an intermediate step" (a baseline of the paper) is the generic
``skip`` argument: with ``skip`` = k the inversion runs only up to step N - k, and an edit with
the same skip starts from x_{N-k} (``xts[N-k]``). No noise maps are returned (``zs`` is None,
``eta`` is 0), so every editor samples deterministically (σ = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from framework import progress
from framework.inversion import Inverter
from framework.registry import INVERTERS
from framework.schedule import Schedule


@dataclass
class DDIMOptions:
    """Options of ``ddim`` (defaults: plain DDIM inversion, no source guidance)."""

    guidance_scale: float = 1.0  # classifier-free guidance on the source prompt while inverting


def ddim_inversion_sequence(
    backbone,  # noqa: ANN001
    x0: Tensor,
    schedule: Schedule,
    n: int,
    cond: Tensor | None,
    uncond: Tensor | None,
    guidance_scale: float,
    desc: str = "ddim-invert",
) -> Tensor:
    """Run steps 1..n of DDIM inversion from x0 (B, C, h, w); return xts (n+1, B, C, h, w)."""
    xts = torch.empty((n + 1, *x0.shape), dtype=torch.float32, device=x0.device)
    xts[0] = x0
    x = x0
    for i in progress.steps(range(1, n + 1), desc=desc, total=n):
        a = float(schedule.abar[i - 1])
        a_prev = float(schedule.abar_prev[i - 1])
        t = int(schedule.timesteps[i - 1])
        eps = backbone.predict_noise(x, t, cond, uncond, guidance_scale)
        x0_pred = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
        x = a**0.5 * x0_pred + (1 - a) ** 0.5 * eps
        xts[i] = x
    return xts


@INVERTERS.register("ddim")
class DDIMInversion(Inverter):
    """Deterministic DDIM inversion; ``skip`` stops it at an intermediate step."""

    Options = DDIMOptions

    stochastic = False

    def trajectory(self, backbone, x0, schedule, n, cond, uncond, guidance_scale, generator):  # noqa: ANN001
        """DDIM steps 1..n backwards; no noise maps. ``generator`` is unused (deterministic)."""
        return ddim_inversion_sequence(backbone, x0, schedule, n, cond, uncond, guidance_scale), None
