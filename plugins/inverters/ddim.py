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

pix2pix-zero's regularised inversion (``src/utils/ddim_inv.py`` of pix2pixzero/pix2pix-zero)
is an option, off by default: at every step the predicted noise ε is pushed toward white
noise before it is used (for both x̂0 and the direction term), ``regularization_steps`` times:

    ``autocorrelation_rolls`` times:  ε <- ε - λ_ac ∇L_ac(ε) / rolls
    once:                             ε <- ε - λ_kl ∇L_kl(ε)

with, per image (C channels), L_ac = Σ_channels Σ_levels [mean(n · roll_H(n, r))² +
mean(n · roll_W(n, r))²] over a pyramid n = the channel, then 2×2 average-pooled while its
height is above 8 (64 -> 32 -> 16 -> 8 for SD's latents), r a random shift in 1..h/2-1 drawn
per level (``random_shift``; else 1), and L_kl = var + mean² - 1 - log(var + 1e-7) over all
of the image's values (unbiased variance). The reference uses λ_ac = λ_kl = 20, 5 steps, 5
rolls, source guidance 1 (``src/inversion.py``): preset ``inverter=ddim_pix2pix_zero``. The
shifts are drawn from the inversion's generator (seed 0 when none is given), so a run is
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from framework import progress
from framework.errors import ConfigError
from framework.inversion import Inverter
from framework.process import ProcessSchedule
from framework.registry import INVERTERS

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class DDIMOptions:
    """Options of ``ddim`` (defaults: plain DDIM inversion, no source guidance)."""

    guidance_scale: float = 1.0  # classifier-free guidance on the source prompt while inverting
    # pix2pix-zero's noise regularisation (0: off, plain DDIM; the reference: 20 and 20)
    autocorrelation_weight: float = 0.0  # λ_ac
    kl_weight: float = 0.0  # λ_kl
    regularization_steps: int = 5  # outer iterations per step
    autocorrelation_rolls: int = 5  # auto-correlation gradient steps per iteration (each / rolls)
    random_shift: bool = True  # random roll per pyramid level (the reference); False: roll by 1


@dataclass
class NoiseRegularization:
    """pix2pix-zero's regularisation of the predicted noise during DDIM inversion."""

    autocorrelation_weight: float = 20.0
    kl_weight: float = 20.0
    steps: int = 5
    rolls: int = 5
    random_shift: bool = True

    @property
    def active(self) -> bool:
        return self.steps > 0 and (self.autocorrelation_weight > 0 or self.kl_weight > 0)


def _shift(size: int, generator: torch.Generator | None, random_shift: bool) -> int:
    """The roll of one pyramid level: uniform in 1..size//2 - 1 (1 where that range is empty)."""
    if not random_shift or size // 2 <= 1:
        return 1
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(1, size // 2, (1,), generator=generator, device=device))


def autocorrelation_loss(
    noise: Tensor, generator: torch.Generator | None = None, random_shift: bool = True
) -> Tensor:
    """pix2pix-zero's auto-correlation loss of noise maps (B, C, h, w): Σ over images,
    channels and pyramid levels of mean(n·roll_h(n, r))² + mean(n·roll_w(n, r))², levels
    2×2-average-pooled while the height is above 8; a scalar."""
    total = noise.new_zeros(())
    for b in range(noise.shape[0]):
        for c in range(noise.shape[1]):
            n = noise[b, c][None, None]
            while True:
                r = _shift(n.shape[2], generator, random_shift)
                total = total + (n * torch.roll(n, shifts=r, dims=2)).mean() ** 2
                total = total + (n * torch.roll(n, shifts=r, dims=3)).mean() ** 2
                if n.shape[2] <= 8:
                    break
                n = F.avg_pool2d(n, kernel_size=2)
    return total


def kl_loss(noise: Tensor) -> Tensor:
    """Σ over images of var + mean² - 1 - log(var + 1e-7), the statistics of each image's
    (C, h, w) values (unbiased variance): KL to N(0, 1) up to a factor; a scalar."""
    flat = noise.flatten(1)
    mu, var = flat.mean(dim=1), flat.var(dim=1)
    return (var + mu**2 - 1 - torch.log(var + 1e-7)).sum()


def regularize_noise(eps: Tensor, reg: NoiseRegularization, generator: torch.Generator | None) -> Tensor:
    """The regularised noise prediction (B, C, h, w) float32 (see the module docstring)."""
    with torch.inference_mode(False), torch.enable_grad():
        e = eps.detach().clone().float()
        for _ in range(reg.steps):
            if reg.autocorrelation_weight > 0:
                for _ in range(reg.rolls):
                    v = e.detach().clone().requires_grad_(True)
                    (g,) = torch.autograd.grad(autocorrelation_loss(v, generator, reg.random_shift), v)
                    e = e - reg.autocorrelation_weight * g / reg.rolls
            if reg.kl_weight > 0:
                v = e.detach().clone().requires_grad_(True)
                (g,) = torch.autograd.grad(kl_loss(v), v)
                e = e - reg.kl_weight * g
            e = e.detach()
    return e


def ddim_inversion_sequence(
    backbone: Backbone,
    x0: Tensor,
    schedule: ProcessSchedule,
    n: int,
    cond: Tensor | None,
    uncond: Tensor | None,
    guidance_scale: float,
    desc: str = "ddim-invert",
    regularization: NoiseRegularization | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run steps 1..n of DDIM inversion from x0 (B, C, h, w); return xts (n+1, B, C, h, w).
    ``regularization`` (active): pix2pix-zero's noise regularisation, shifts from ``generator``."""
    reg = regularization if regularization is not None and regularization.active else None
    xts = torch.empty((n + 1, *x0.shape), dtype=torch.float32, device=x0.device)
    xts[0] = x0
    x = x0
    for i in progress.steps(range(1, n + 1), desc=desc, total=n):
        t = schedule.timestep(i)
        eps = backbone.predict_noise(x, t, cond, uncond, guidance_scale)
        if reg is not None:
            eps = regularize_noise(eps, reg, generator)
        x = schedule.inverse_step(x, eps, i)
        xts[i] = x
    return xts


@INVERTERS.register("ddim")
class DDIMInversion(Inverter):
    """Deterministic DDIM inversion; ``skip`` stops it at an intermediate step."""

    Options = DDIMOptions

    stochastic = False

    def regularization(self) -> NoiseRegularization:
        """The noise regularisation of the options (validated)."""
        o = self.options
        if o.autocorrelation_weight < 0 or o.kl_weight < 0:
            raise ConfigError(
                f"ddim.autocorrelation_weight and ddim.kl_weight must be >= 0, got {o.autocorrelation_weight} "
                f"and {o.kl_weight}"
            )
        if o.regularization_steps < 0 or o.autocorrelation_rolls < 1:
            raise ConfigError(
                f"ddim.regularization_steps must be >= 0 and ddim.autocorrelation_rolls >= 1, got "
                f"{o.regularization_steps} and {o.autocorrelation_rolls}"
            )
        return NoiseRegularization(
            float(o.autocorrelation_weight), float(o.kl_weight), int(o.regularization_steps),
            int(o.autocorrelation_rolls), bool(o.random_shift),
        )

    def trajectory(self, backbone: Backbone, x0, schedule, n, cond, uncond, guidance_scale, generator):
        """DDIM steps 1..n backwards; no noise maps. ``generator`` only draws the
        regulariser's random shifts (seed 0 when None); plain DDIM does not use it."""
        reg = self.regularization()
        if reg.active and reg.random_shift and generator is None:
            generator = torch.Generator().manual_seed(0)
        xts = ddim_inversion_sequence(
            backbone, x0, schedule, n, cond, uncond, guidance_scale, regularization=reg, generator=generator
        )
        return xts, None
