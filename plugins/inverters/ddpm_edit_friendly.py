"""Edit-friendly DDPM inversion (Algorithm 1 of Huberman-Spiegelglas et al., CVPR 2024).

The auxiliary sequence is drawn with independent noises (eq. 6),
x_i = sqrt(ᾱ_i) x0 + sqrt(1-ᾱ_i) ε̃_i, and the noise maps are extracted from it (eq. 5),
z_i = (x_{i-1} - μ̂_i(x_i)) / σ_i, going from the noisiest computed step down to step 1.
After each extraction x_{i-1} is reset to μ̂_i(x_i) + σ_i z_i, so that the reverse process fed
with these maps reproduces the sequence, and x0, to float precision.

Because eq. 6 draws every x_i independently from x0, all network inputs are known up front:
``timestep_batch`` > 1 (or ``auto``) evaluates that many timesteps per forward pass
(:mod:`framework.batched_inversion`, which explains how the reset above carries over). The
default, 1, is the sequential loop below, bit for bit as before; batched maps equal it to float
tolerance (the network sees rounding-different inputs), not bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from framework import progress
from framework.backbone import check_finite
from framework.batched_inversion import check_timestep_batch, extract_noise_maps_batched
from framework.inversion import Inverter
from framework.process import ProcessSchedule
from framework.random import randn
from framework.registry import INVERTERS

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class DDPMEditFriendlyOptions:
    """Options of ``ddpm_edit_friendly`` (defaults: the paper's)."""

    eta: float = 1.0  # stochasticity of the DDPM scheme, in (0, 1]
    guidance_scale: float = 3.5  # classifier-free guidance on the source prompt
    zero_last_noise: bool = False  # True: z_1 = 0 as the reference code (x0 is then not exact)
    # timesteps per network pass: 1 = sequential (bit-identical to before), N > 1, or "auto"
    timestep_batch: int | str = 1


def auxiliary_sequence(
    x0: Tensor, schedule: ProcessSchedule, n: int, generator: torch.Generator | None
) -> Tensor:
    """Eq. 6: (n+1, B, C, h, w) with xts[0] = x0 and independent noise at every step."""
    xts = torch.empty((n + 1, *x0.shape), dtype=torch.float32, device=x0.device)
    xts[0] = x0
    for i in range(1, n + 1):
        xts[i] = schedule.add_noise(x0, randn(x0.shape, generator, x0.device), i)
    return xts


def extract_noise_maps(
    backbone: Backbone,
    xts: Tensor,
    schedule: ProcessSchedule,
    cond: Tensor | None,
    uncond: Tensor | None,
    guidance_scale: float,
    zero_last_noise: bool = False,
    desc: str = "invert",
) -> Tensor:
    """Eq. 5 along ``xts`` (modified in place so the reverse pass is exact); returns zs (n, ...).

    ``xts[0]`` is left as given; ``xts[1..n-1]`` are replaced by μ̂ + σ z (equal up to rounding).
    Where σ_i = 0 (a schedule with ᾱ_prev = 1) z_i is 0 and that step is deterministic.
    """
    n = xts.shape[0] - 1
    zs = torch.empty_like(xts[1:])
    for i in progress.steps(range(n, 0, -1), desc=desc, total=n):
        t = schedule.timestep(i)
        eps = backbone.predict_noise(xts[i], t, cond, uncond, guidance_scale)
        schedule.noise_map_step(xts, zs, i, eps, zero_last_noise)
    return zs


@INVERTERS.register("ddpm_edit_friendly")
class DDPMEditFriendly(Inverter):
    """Edit-friendly DDPM noise maps: exact reconstruction, structure imprinted in the maps."""

    Options = DDPMEditFriendlyOptions

    def __init__(self, options: DDPMEditFriendlyOptions | None = None) -> None:
        super().__init__(options)
        check_timestep_batch(self.options.timestep_batch)  # a bad value fails when built

    def trajectory(self, backbone: Backbone, x0, schedule, n, cond, uncond, guidance_scale, generator):
        """Eq. 6 then eq. 5: the independent-noise sequence and its noise maps."""
        xts = auxiliary_sequence(x0, schedule, n, generator)
        zs = noise_maps(
            backbone, xts, schedule, cond, uncond, guidance_scale, self.options.timestep_batch,
            self.options.zero_last_noise,
        )
        return xts, zs


def noise_maps(
    backbone: Backbone,
    xts: Tensor,
    schedule: ProcessSchedule,
    cond: Tensor | None,
    uncond: Tensor | None,
    guidance_scale: float,
    timestep_batch: int | str,
    zero_last_noise: bool,
    desc: str = "invert",
) -> Tensor:
    """Eq. 5 along a sequence whose every x_i is known before the first network call (the
    edit-friendly sequence, CycleDiffusion's chain): :func:`extract_noise_maps` for
    ``timestep_batch`` 1, else :func:`extract_noise_maps_batched`; the maps are checked finite."""
    batch = check_timestep_batch(timestep_batch)
    if batch == 1:
        zs = extract_noise_maps(backbone, xts, schedule, cond, uncond, guidance_scale, zero_last_noise, desc=desc)
    else:
        zs = extract_noise_maps_batched(
            backbone, xts, schedule, cond, uncond, guidance_scale, batch, zero_last_noise, desc=desc
        )
    check_finite(zs, "the noise maps", getattr(backbone, "dtype", torch.float32), "backbone.dtype")
    return zs
