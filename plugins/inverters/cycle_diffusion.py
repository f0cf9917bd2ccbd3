"""CycleDiffusion's DDPM inversion (Wu & De la Torre, 2023), as compared in the paper.

Unlike the edit-friendly sequence (independent noise at every step, eq. 6), CycleDiffusion
samples ONE chain from the forward process' posteriors given x0:

    x_n     ~ q(x_n | x0)              = N(sqrt(ᾱ_n) x0, (1-ᾱ_n) I)
    x_{i-1} ~ q(x_{i-1} | x_i, x0)     = N(sqrt(ᾱ_prev) x0 + sqrt(1-ᾱ_prev-σ_i²) ε_i, σ_i² I),
              ε_i = (x_i - sqrt(ᾱ_i) x0) / sqrt(1-ᾱ_i)

(the posterior of DDIM's η family, σ_i as in eq. 3; η = 1 is DDPM's posterior), for
i = n..2, with x_0 = x0. Only then are the noise maps extracted with eq. 5,
z_i = (x_{i-1} - μ̂_i(x_i)) / σ_i, going down from step n (``extract_noise_maps``, which also
resets x_{i-1} = μ̂_i + σ_i z_i so that the reverse pass reproduces x0 to float precision).
The chain does not use the model, so it is fully drawn before the extraction, and the
extraction can evaluate several timesteps per network pass (``timestep_batch``, as for the
edit-friendly inverter).

Because consecutive x_i are coupled as in the forward process, the maps look like native DDPM
noise (variance about 1, no correlation across steps): the paper's point of comparison.
Defaults: η = 1 and source guidance 3.5, the setting the paper compares (as its own
inversion); CycleDiffusion's own paper uses η = 0.1 (``configs/inverter/cycle_diffusion_eta01``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from framework.batched_inversion import check_timestep_batch
from framework.inversion import Inverter
from framework.process import ProcessSchedule
from framework.random import randn
from framework.registry import INVERTERS
from plugins.inverters.ddpm_edit_friendly import noise_maps

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class CycleDiffusionOptions:
    """Options of ``cycle_diffusion`` (defaults: the paper's comparison setting)."""

    eta: float = 1.0  # in (0, 1]; the paper compares η = 1, CycleDiffusion's own default is 0.1
    guidance_scale: float = 3.5  # source classifier-free guidance, as the edit-friendly inverter
    zero_last_noise: bool = False  # True: z_1 = 0 (x0 is then not reproduced exactly)
    # timesteps per network pass: 1 = sequential, N > 1, or "auto" (the chain is drawn first,
    # so every network input is known up front, as for the edit-friendly sequence)
    timestep_batch: int | str = 1


def posterior_chain(
    x0: Tensor, schedule: ProcessSchedule, n: int, generator: torch.Generator | None
) -> Tensor:
    """One chain x_n ~ q(x_n|x0), x_{i-1} ~ q(x_{i-1}|x_i, x0): (n+1, B, C, h, w), xts[0] = x0."""
    xts = torch.empty((n + 1, *x0.shape), dtype=torch.float32, device=x0.device)
    xts[0] = x0
    xts[n] = schedule.add_noise(x0, randn(x0.shape, generator, x0.device), n)
    for i in range(n, 1, -1):
        xts[i - 1] = schedule.posterior_sample(xts[i], x0, i, randn(x0.shape, generator, x0.device))
    return xts


@INVERTERS.register("cycle_diffusion")
class CycleDiffusion(Inverter):
    """CycleDiffusion: a posterior chain given x0, then eq. 5; native-looking noise maps."""

    Options = CycleDiffusionOptions

    def __init__(self, options: CycleDiffusionOptions | None = None) -> None:
        super().__init__(options)
        check_timestep_batch(self.options.timestep_batch)  # a bad value fails when built

    def trajectory(self, backbone: Backbone, x0, schedule, n, cond, uncond, guidance_scale, generator):
        """The posterior chain, then eq. 5 along it."""
        xts = posterior_chain(x0, schedule, n, generator)
        zs = noise_maps(
            backbone, xts, schedule, cond, uncond, guidance_scale, self.options.timestep_batch,
            self.options.zero_last_noise, desc="cycle-invert",
        )
        return xts, zs
