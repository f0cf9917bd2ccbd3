"""EDICT: exact inversion with two coupled sequences (Wallace, Gokul & Naik, CVPR 2023).

Two latents x, y start equal to x0. Generation step i (x_i, y_i) -> (x_{i-1}, y_{i-1}) updates
each sequence with DDIM's step, taking the noise prediction at the *other* sequence, then mixes
them with the coefficient p (0.93 by default):

    D(z, e) = z / q - sqrt(1-ᾱ_i) e / q + sqrt(1-ᾱ_prev) e,   q = sqrt(ᾱ_i / ᾱ_prev)
    x' = D(x_i, ε̂(y_i, t_i));  y' = D(y_i, ε̂(x', t_i))     (the order alternates, below)
    x_{i-1} = p x' + (1-p) y';  y_{i-1} = (1-p) x_{i-1} + p y'

Every update is affine in the sequence it changes, so each can be undone exactly; inversion
runs the steps backwards from x0: un-mix y' = (y_{i-1} - (1-p) x_{i-1}) / p,
x' = (x_{i-1} - (1-p) y') / p, then R(z, e) = q z + sqrt(1-ᾱ_i) e - q sqrt(1-ᾱ_prev) e, the
inverse of D, undoes the two updates in reverse order. As in the reference code (its
"leapfrog" steps), the sequence updated first alternates: at the k-th generation step from the
noisy end (k = n - i, n = N - skip the inversion's first step) x goes first when k is even, y
when k is odd. The reference's ``init_image_strength`` is ``1 - skip/N``; its timesteps are the
model scheduler's "leading" ones with ᾱ_prev of step 1 the final ᾱ, as every inverter here.

Both inversion and regeneration use classifier-free guidance with the prompt given (the
source prompt when inverting, the target prompts when editing) at every network evaluation:
two evaluations per step, 2n per inversion and 2·(N - skip) per edit. Regeneration with the
source prompt and the inversion's guidance reproduces x0 to float precision at any guidance
scale. The inversion stores x_i in ``xts`` and y_i in ``coupled``; its ``rule`` is ``edict``
and its ``rule_factory`` ``edict_regeneration``, which every editor's loop then uses. The
edit's result is the x sequence (the reference's first image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from framework import progress
from framework.errors import ConfigError
from framework.inversion import Inversion, Inverter
from framework.process import ProcessSchedule
from framework.registry import INVERTERS
from framework.sampling import NoiseFn, StepRule, expand_rows

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class EDICTOptions:
    """Options of ``edict`` (defaults: the EDICT code's)."""

    guidance_scale: float = 3.0  # classifier-free guidance on the source prompt (EDICT: 3)
    mix_weight: float = 0.93  # p of the mixing layers, in (0.5, 1]
    # the scheduler's steps_offset for this inversion and its edits: null keeps the backbone's
    # (SD: 1, 981 ... 1 for 50 steps); 0 gives 980 ... 0 with a first step that changes nothing,
    # as the EDICT code's DDIMScheduler
    steps_offset: int | None = None


def denoise_step(schedule: ProcessSchedule, i: int, z: Tensor, eps: Tensor) -> Tensor:
    """D: the deterministic step i (x_i -> x_{i-1}) of ``z`` with the noise prediction ``eps``."""
    return schedule.deterministic_step(z, eps, i)


def noise_step(schedule: ProcessSchedule, i: int, z: Tensor, eps: Tensor) -> Tensor:
    """R = D⁻¹ for the same ``eps``: x_{i-1} -> x_i."""
    return schedule.deterministic_inverse(z, eps, i)


def x_first(k: int) -> bool:
    """Whether x is updated first at the k-th generation step from the noisy end."""
    return k % 2 == 0


class EDICTRule(StepRule):
    """EDICT's coupled generation step on (x, y), each (B, C, h, w), held in float64 as the
    reference code does (the network sees float32); the output is x in float32."""

    def __init__(
        self,
        schedule: ProcessSchedule,
        x: Tensor,
        y: Tensor,
        mix_weight: float,
        first_step: int,
        xts: Tensor | None = None,
        coupled: Tensor | None = None,
    ) -> None:
        self.schedule = schedule
        self.x, self.y = x.double(), y.double()  # the coupled arithmetic runs in float64
        self.p = float(mix_weight)
        self.first_step = first_step  # n: the parity of the alternation counts from it
        self.xts, self.coupled = xts, coupled

    @property
    def evaluations_per_step(self) -> int:
        return 2

    def sequences(self) -> list[Tensor]:
        return [self.x, self.y]

    def output(self) -> Tensor:
        return self.x.float()

    def set_sequences(self, xs: list[Tensor]) -> None:
        self.x, self.y = xs

    def follow(self, i: int, rows: slice) -> None:
        if self.xts is None or self.coupled is None:
            super().follow(i, rows)
        self.x[rows] = self.xts[i][0].to(self.x.device, self.x.dtype)
        self.y[rows] = self.coupled[i][0].to(self.y.device, self.y.dtype)

    def step(self, i: int, eps_fn: Callable[[Tensor], Tensor], noise_fn: NoiseFn | None) -> None:
        s, p = self.schedule, self.p
        x, y = self.x, self.y

        def eps(z: Tensor) -> Tensor:
            return eps_fn(z.float()).double()

        if x_first(self.first_step - i):
            x = denoise_step(s, i, x, eps(y))
            y = denoise_step(s, i, y, eps(x))
        else:
            y = denoise_step(s, i, y, eps(x))
            x = denoise_step(s, i, x, eps(y))
        x = p * x + (1 - p) * y
        y = (1 - p) * x + p * y
        self.x, self.y = x, y


def edict_regeneration(
    inversion: Inversion,
    backbone: Backbone,
    start: int,
    rows: int,
    *,
    generator: torch.Generator | None = None,
    n_source: int = 0,
    transform: Callable[[Tensor], Tensor] | None = None,
    zs: Tensor | None = None,
    shared_noise: bool = False,
) -> EDICTRule:
    """The :class:`EDICTRule` of an EDICT inversion from step ``start`` (deterministic: the
    generator, the source rows and noise maps play no part)."""
    if inversion.coupled is None:
        raise ConfigError(f"the {inversion.method} inversion has rule 'edict' but no coupled sequence")
    pair = []
    for seq in (inversion.xts, inversion.coupled):
        z = seq[start].to(backbone.device)
        if transform is not None:
            z = transform(z)
        pair.append(expand_rows(z, rows))
    return EDICTRule(
        inversion.schedule(backbone, 0.0),
        pair[0],
        pair[1],
        inversion.rule_options.get("mix_weight", 0.93),
        inversion.start_step,
        inversion.xts,
        inversion.coupled,
    )



@INVERTERS.register("edict")
class EDICT(Inverter):
    """EDICT: two coupled DDIM sequences with mixing layers; exact, 2 evaluations per step."""

    Options = EDICTOptions

    stochastic = False

    def trajectory(self, backbone: Backbone, x0, schedule, n, cond, uncond, guidance_scale, generator):
        """Steps 1..n backwards from (x0, x0): (xts, None, {rule, coupled})."""
        p = float(self.options.mix_weight)
        if not 0.5 < p <= 1.0:
            raise ConfigError(f"edict.mix_weight must be in (0.5, 1], got {p}")
        xts = torch.empty((n + 1, *x0.shape), dtype=torch.float64, device=x0.device)
        ys = torch.empty_like(xts)
        xts[0] = ys[0] = x0
        x, y = x0.double(), x0.double()
        for i in progress.steps(range(1, n + 1), desc="edict-invert", total=n):
            t = schedule.timestep(i)

            def eps(z: Tensor) -> Tensor:
                return backbone.predict_noise(z.float(), t, cond, uncond, guidance_scale).double()

            y = (y - (1 - p) * x) / p
            x = (x - (1 - p) * y) / p
            if x_first(n - i):  # generation updated x then y: undo y first
                y = noise_step(schedule, i, y, eps(x))
                x = noise_step(schedule, i, x, eps(y))
            else:
                x = noise_step(schedule, i, x, eps(y))
                y = noise_step(schedule, i, y, eps(x))
            xts[i], ys[i] = x, y
        return xts, None, {
            "rule": "edict", "rule_factory": edict_regeneration, "rule_options": {"mix_weight": p}, "coupled": ys,
        }
