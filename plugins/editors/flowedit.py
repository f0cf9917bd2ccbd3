"""FlowEdit (Kulikov, Kleiner, Huberman-Spiegelglas & Michaeli, ICCV 2025): inversion-free editing
of flow models, as the authors' code runs it (``FlowEditSD3`` in FlowEdit_utils.py of
fallenshock/FlowEdit).

With x_src the encoded input, t_i the time of step i (t_0 = 0) and ε fresh noise drawn at every
step, the edit z starts at x_src and, for the steps i from ``n_max`` down to ``n_min`` + 1,

    z_src = (1 − t_i)·x_src + t_i·ε
    z_tar = z_src + (z − x_src)
    V_Δ   = v(z_tar, t_i; target) − v(z_src, t_i; source)      (averaged over ``n_avg`` draws of ε)
    z    <- z + (t_{i-1} − t_i)·V_Δ

where v is the guided velocity: the source branch at ``source_guidance_scale``, the target at
``guidance_scale``, each against the empty prompt (the reference's negative prompt ""), both in
one network pass. The difference of the two velocities moves z from the source's distribution
to the target's without inverting anything. For the last ``n_min`` steps the edit is sampled
plainly: at step ``n_min`` the input is noised once, x = z + ((1 − t)·x_src + t·ε − x_src), and
the Euler steps x <- x + (t_{i-1} − t_i)·v(x; target) follow. The result is z (``n_min`` = 0) or
that x. The steps are the process' Euler steps (``ProcessSchedule.deterministic_step``) and
the network runs in the one reverse loop through a step rule, :class:`FlowEditRule`.

Differences from the reference: the reference computes z_tar as (z + z_src) − x_src, which in
float arithmetic is not exactly z_src when z = x_src (equal prompts then move the input by
rounding); here z_src + (z − x_src), the same value in exact arithmetic. Its ``n_min`` > 0 branch
reads an undefined name (``noise_pred_tar``), so only ``n_min`` = 0 (its SD3 setting) runs there.
With several target prompts every target gets the same draws of ε and one source row is shared.
The first step is ``n_max``, and at most N − ``skip`` (``n_max`` null: N − ``skip``).

The edit reads only the inversion's x0, its step count and source prompt: ``inverter=none``
spares the inversion. It needs a flow-matching backbone (``sd3``, ``tiny_sd3``, ``digits_flow``):
on a DDPM model the difference of two velocities has no counterpart in x0's space, and the
editor refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from framework.errors import InputError
from framework.inversion import Inversion
from framework.process import FlowMatchProcess, ProcessSchedule, check_steps
from framework.random import randn
from framework.registry import EDITORS
from framework.sampling import Editor, Guidance, NoiseFn, StepRule, denoise, expand_rows
from framework.schema import DEFAULT_SKIP

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class FlowEditOptions:
    """Options of ``flowedit`` (defaults: the authors' SD3 settings, with the run's 50 steps)."""

    n_max: int | None = 33  # the first (noisiest) step edited; null: N - skip
    n_min: int = 0  # the last n_min steps sample the target plainly (0: FlowEdit to the end)
    n_avg: int = 1  # draws of the noise averaged per step
    source_guidance_scale: float = 3.5  # classifier-free guidance of the source velocity
    guidance_scale: float = 13.5  # classifier-free guidance of the target velocity


class FlowEditRule(StepRule):
    """FlowEdit's step (see the module docstring) on K edits (K, C, h, w) of one source x_src
    (1, C, h, w). ``eps_fn`` must take 1 + K rows: the source row, then the K targets."""

    def __init__(
        self,
        schedule: ProcessSchedule,
        x_src: Tensor,
        k: int,
        n_min: int,
        n_avg: int,
        generator: torch.Generator | None,
    ) -> None:
        self.schedule = schedule
        self.x_src = x_src.float()
        self.x = expand_rows(self.x_src, k)
        self.n_min = n_min
        self.n_avg = n_avg
        self.generator = generator

    @property
    def evaluations_per_step(self) -> int:
        return self.n_avg

    def sequences(self) -> list[Tensor]:
        return [self.x]

    def set_sequences(self, xs: list[Tensor]) -> None:
        (self.x,) = xs

    def _noised_source(self, i: int) -> Tensor:
        """(1 − t_i)·x_src + t_i·ε with a fresh draw of ε."""
        noise = randn(self.x_src.shape, self.generator, self.x_src.device)
        return self.schedule.add_noise(self.x_src, noise, i)

    def step(self, i: int, eps_fn: Callable[[Tensor], Tensor], noise_fn: NoiseFn | None) -> None:
        s = self.schedule
        if i > self.n_min:
            delta = torch.zeros_like(self.x)
            for _ in range(self.n_avg):
                z_src = self._noised_source(i)
                z_tar = z_src + (self.x - self.x_src)
                v = eps_fn(torch.cat([z_src, z_tar]))
                delta = delta + (1 / self.n_avg) * (v[1:] - v[:1])
            self.x = s.deterministic_step(self.x, delta, i)
            return
        if i == self.n_min:  # the first plain step: noise the input once, keep the edit's offset
            self.x = self._noised_source(i) + (self.x - self.x_src)
        v = eps_fn(torch.cat([self.x[:1], self.x]))[1:]
        self.x = s.deterministic_step(self.x, v, i)


@EDITORS.register("flowedit")
class FlowEditEditor(Editor):
    """Inversion-free editing of a flow model by the difference of target and source velocities."""

    Options = FlowEditOptions
    #: only the inversion's x0, step count and source prompt are read
    needs_inversion = False

    def first_step(self, num_steps: int, skip: int) -> int:
        """The first edited step: ``n_max`` (at most N − skip), or N − skip."""
        o = self.options
        top = num_steps - skip
        if o.n_max is None:
            return top
        if isinstance(o.n_max, bool) or not isinstance(o.n_max, int) or not 1 <= o.n_max <= num_steps:
            raise InputError(f"flowedit n_max must be an integer in 1..{num_steps} (num_steps), got {o.n_max!r}")
        return min(o.n_max, top)

    def check_options(self, first: int) -> None:
        o = self.options
        if isinstance(o.n_avg, bool) or not isinstance(o.n_avg, int) or o.n_avg < 1:
            raise InputError(f"flowedit n_avg must be an integer >= 1, got {o.n_avg!r}")
        if isinstance(o.n_min, bool) or not isinstance(o.n_min, int) or not 0 <= o.n_min <= first:
            raise InputError(
                f"flowedit n_min must be an integer in 0..{first} (the first edited step, n_max or "
                f"num_steps - skip), got {o.n_min!r}"
            )

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
        """(K, C, h, w) latents, one per target prompt."""
        targets = self.check_inputs(backbone, inversion, target_prompts)
        if not isinstance(backbone.process, FlowMatchProcess):
            raise InputError(
                f"flowedit edits flow-matching models (sd3, tiny_sd3, digits_flow); the backbone "
                f"{type(backbone).__name__} is a DDPM model, whose edits take an inverter and another editor"
            )
        n = inversion.num_steps
        check_steps(n, skip)
        first = self.first_step(n, skip)
        self.check_options(first)
        if source_prompt is None:
            source_prompt = inversion.source_prompt[0]
        if not isinstance(source_prompt, str):
            raise InputError(f"source_prompt must be a string, got {source_prompt!r}")
        o = self.options
        cond = backbone.encode_prompt([source_prompt, *targets])
        scales = torch.tensor([float(o.source_guidance_scale)] + [float(o.guidance_scale)] * len(targets))
        uncond = backbone.null_condition() if bool((scales != 1).any()) else None
        schedule = backbone.schedule(n, 0.0)
        x_src = inversion.x0[:1].to(backbone.device)
        rule = FlowEditRule(schedule, x_src, len(targets), o.n_min, o.n_avg, generator)
        return denoise(backbone, rule, first, Guidance(cond, uncond, scales), desc="flowedit")
