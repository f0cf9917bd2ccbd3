"""DDPM/DDIM schedule arithmetic in paper indexing, always in float32.

Steps are numbered i = 1..N as in the paper: step i takes x_i to x_{i-1} at model timestep
``timesteps[i-1]``. For step i, ``abar[i-1]`` is ᾱ at that timestep and ``abar_prev[i-1]`` is ᾱ
at the timestep of step i-1 (for step 1, the scheduler's ``final_alpha_cumprod``).

The reverse step (eq. 3) is x_{i-1} = μ̂_i(x_i) + σ_i z_i with, for the predicted noise ε,

    x̂0   = (x_i - sqrt(1-ᾱ_i) ε) / sqrt(ᾱ_i)
    σ_i  = η sqrt((1-ᾱ_prev)/(1-ᾱ_i) · (1-ᾱ_i/ᾱ_prev))
    μ̂_i  = sqrt(ᾱ_prev) x̂0 + sqrt(1-ᾱ_prev-σ_i²) ε

which is DDIM's formula for every η in [0, 1] (η = 1 is DDPM's posterior variance, η = 0 DDIM).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from framework.errors import InputError


@dataclass(frozen=True)
class Schedule:
    """Per-step coefficients for ``num_steps`` inference steps (index i-1 is step i)."""

    timesteps: Tensor  # (N,) int64, ascending: timesteps[i-1] is the model timestep of step i
    abar: Tensor  # (N,) float32, ᾱ at step i
    abar_prev: Tensor  # (N,) float32, ᾱ at step i-1 (final_alpha_cumprod for i = 1)
    eta: float

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @cached_property
    def sigma(self) -> Tensor:
        """(N,) σ_i = η sqrt((1-ᾱ_prev)/(1-ᾱ_i)·(1-ᾱ_i/ᾱ_prev)), computed once per schedule."""
        var = (1 - self.abar_prev) / (1 - self.abar) * (1 - self.abar / self.abar_prev)
        return self.eta * var.clamp(min=0).sqrt()

    def coefficients(self, i: int) -> tuple[float, float, float, float]:
        """(ᾱ_i, ᾱ_prev, σ_i, timestep) of step ``i`` (1-based) as Python floats."""
        return (
            float(self.abar[i - 1]),
            float(self.abar_prev[i - 1]),
            float(self.sigma[i - 1]),
            int(self.timesteps[i - 1]),
        )

    def predict_x0(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """x̂0 = (x_i - sqrt(1-ᾱ_i) ε) / sqrt(ᾱ_i), the clean prediction P(f_t(x_t)) of eq. 4."""
        a = float(self.abar[i - 1])
        return (x_t - (1 - a) ** 0.5 * eps) / a**0.5

    def mu(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """μ̂_i(x_i): the deterministic part of the reverse step i (float32)."""
        _, a_prev, sigma, _ = self.coefficients(i)
        x0_pred = self.predict_x0(x_t, eps, i)
        direction = max(1 - a_prev - sigma**2, 0.0) ** 0.5
        return a_prev**0.5 * x0_pred + direction * eps

    def noise_level(self, i: int) -> tuple[float, float]:
        """(sqrt(ᾱ_i), sqrt(1-ᾱ_i)): x_i = sqrt(ᾱ_i) x0 + sqrt(1-ᾱ_i) ε for step i (eq. 2, 6)."""
        a = float(self.abar[i - 1])
        return a**0.5, (1 - a) ** 0.5


def make_schedule(
    alphas_cumprod: Tensor,
    timesteps_desc: Tensor,
    final_alpha_cumprod: float,
    eta: float,
) -> Schedule:
    """Build a :class:`Schedule` from a scheduler's ᾱ table and its (descending) timesteps."""
    if not 0.0 <= eta <= 1.0:
        raise InputError(f"eta must be in [0, 1], got {eta}")
    ac = alphas_cumprod.detach().to("cpu", torch.float64)
    ts = timesteps_desc.detach().to("cpu", torch.int64).flip(0)
    abar = ac[ts]
    abar_prev = torch.cat([torch.tensor([float(final_alpha_cumprod)], dtype=torch.float64), abar[:-1]])
    return Schedule(
        timesteps=ts,
        abar=abar.to(torch.float32),
        abar_prev=abar_prev.to(torch.float32),
        eta=float(eta),
    )


def offset_schedule(backbone: Any, num_steps: int, eta: float, steps_offset: int, option: str) -> Schedule:
    """The backbone's schedule for ``num_steps`` with its scheduler's ``steps_offset`` replaced by
    ``steps_offset``: the same spacing, every timestep moved by the difference. With Stable
    Diffusion's scheduler (offset 1: 981 ... 1 for 50 steps) offset 0 gives 980 ... 0, the
    timesteps of reference codes that build ``DDIMScheduler`` without ``steps_offset``; there
    step 1 runs from ᾱ_0 to the final ᾱ (= ᾱ_0 with ``set_alpha_to_one`` False): a step that
    changes nothing, as theirs."""
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise InputError(f"{option} must be null (the backbone's) or an integer >= 0, got {steps_offset!r}")
    config = getattr(getattr(backbone, "scheduler", None), "config", None)
    own = int(getattr(config, "steps_offset", 0) or 0)
    desc = backbone.scheduler_timesteps(num_steps) - own + steps_offset
    limit = int(backbone.alphas_cumprod.shape[0])
    if int(desc.max()) >= limit:
        raise InputError(
            f"{option}={steps_offset} puts the last timestep of {num_steps} steps at {int(desc.max())} >= {limit}; "
            f"use a smaller offset or fewer steps"
        )
    return make_schedule(backbone.alphas_cumprod, desc, backbone.final_alpha_cumprod, eta)


def check_steps(num_steps: int, skip: int) -> None:
    """Reject step counts that cannot run: ``num_steps >= 1`` and ``0 <= skip < num_steps``."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise InputError(f"num_steps (--steps) must be an integer >= 1, got {num_steps!r}")
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise InputError(f"skip (--skip) must be an integer >= 0, got {skip!r}")
    if skip >= num_steps:
        raise InputError(
            f"skip (--skip) must be smaller than the number of steps: got skip={skip} with "
            f"num_steps={num_steps}; accepted: 0 <= skip <= {num_steps - 1}"
        )
