"""Null-text inversion (Mokady et al., CVPR 2023).

1. The pivot: DDIM inversion of x0 with the source prompt and no guidance (guidance 1), giving
   x_1..x_n (``ddim_inversion_sequence``).
2. From the noisy end (k = 0 at step n), the unconditional embedding ∅_i of step i is optimised
   so that the guided DDIM step from the current latent x̄_i lands on the pivot's x_{i-1}:

       ε  = ε̂(x̄_i, t_i, ∅_i) + w (ε̂(x̄_i, t_i, c) - ε̂(x̄_i, t_i, ∅_i))
       loss = mean((μ̂_i(x̄_i, ε) - x_{i-1})²)      (μ̂: the DDIM step, σ = 0)

   with Adam at learning rate lr·(1 - k/100) (lr = 1e-2), at most ``num_inner_steps`` = 10
   iterations, stopping once the loss of an iteration is below ``early_stop_epsilon`` + k·2e-5
   (the update of that iteration is still applied), ∅_i starting from ∅_{i+1} (the null text
   at step n). Then x̄_{i-1} = μ̂_i(x̄_i, ε) with the optimised ∅_i, and the next step. These
   are the reference notebook's (google/prompt-to-prompt, null_text_w_ODE) rules and defaults;
   w = ``guidance_scale`` (7.5).

The inversion keeps the pivot as its trajectory and the n embeddings as its per-step
unconditional embeddings (``Inversion.uncond_embeddings``, (n, B, L, D)); every editor uses
them in place of the null text, so regenerating with the source prompt at guidance w follows
the pivot. Network evaluations: n for the pivot, then per step one conditional evaluation,
one per iteration (each followed by a backward pass) and one for the step: n + Σ (2 + iters).

Gradients: the optimisation runs under ``torch.inference_mode(False)`` and
``torch.enable_grad()`` on clones of its inputs, so it works inside the runner's (and any
caller's) no-grad or inference mode; only the embedding receives gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from framework import progress
from framework.backbone import guide
from framework.errors import ConfigError
from framework.inversion import Inverter
from framework.process import ProcessSchedule
from framework.registry import INVERTERS
from plugins.inverters.ddim import ddim_inversion_sequence

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class NullTextOptions:
    """Options of ``null_text`` (defaults: the reference notebook's)."""

    guidance_scale: float = 7.5  # w: the guidance the embeddings are optimised for (and edits use)
    num_inner_steps: int = 10  # Adam iterations per step at most
    early_stop_epsilon: float = 1e-5  # stop a step once loss < epsilon + k·2e-5
    learning_rate: float = 1e-2  # Adam's lr at the first step, decayed as lr·(1 - k/100)
    # the scheduler's steps_offset for this inversion and its edits: null keeps the backbone's
    # (SD: 1, 981 ... 1 for 50 steps); 0 gives 980 ... 0 with a first step that changes nothing,
    # as copies of the notebook whose DDIMScheduler has no steps_offset
    steps_offset: int | None = None


def optimise_null_text(
    backbone: Backbone,
    pivot: Tensor,
    schedule: ProcessSchedule,
    cond: Tensor,
    null: Tensor,
    guidance_scale: float,
    options: NullTextOptions,
) -> tuple[Tensor, list[int], list[float], list[float]]:
    """Per-step unconditional embeddings along ``pivot`` (n+1, B, C, h, w).

    Returns (embeddings (n, B, L, D) in paper order, and per step from the noisy end: the
    iterations run, the loss of the first iteration and that of the last)."""
    n = pivot.shape[0] - 1
    w = float(guidance_scale)
    with torch.inference_mode(False), torch.enable_grad():
        pivot = pivot.detach().clone()
        cond = cond.detach().clone()
        u = null.detach().clone().expand(cond.shape[0], *null.shape[1:]).clone()
        latent = pivot[n].clone()
        embeddings = torch.empty((n, *u.shape), dtype=u.dtype, device=u.device)
        iterations: list[int] = []
        losses: list[float] = []
        first: list[float] = []
        for k, i in enumerate(progress.steps(range(n, 0, -1), desc="null-text", total=n)):
            t = schedule.timestep(i)
            u = u.detach().clone().requires_grad_(True)
            optimizer = torch.optim.Adam([u], lr=options.learning_rate * (1.0 - k / 100.0))
            target = pivot[i - 1]
            with torch.no_grad():
                eps_c = backbone.predict_noise(latent, t, cond)
            done, loss_value = 0, float("nan")
            for _ in range(options.num_inner_steps):
                eps_u = backbone.predict_noise(latent, t, u)
                eps = guide(eps_u, eps_c, w)
                loss = F.mse_loss(schedule.mu(latent, eps, i), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                done += 1
                loss_value = loss.item()
                if done == 1:
                    first.append(loss_value)
                if loss_value < options.early_stop_epsilon + k * 2e-5:
                    break
            u = u.detach()
            embeddings[i - 1] = u
            iterations.append(done)
            losses.append(loss_value)
            with torch.no_grad():
                eps_u = backbone.predict_noise(latent, t, u)
                latent = schedule.mu(latent, guide(eps_u, eps_c, w), i)
    return embeddings.detach(), iterations, first, losses


@INVERTERS.register("null_text")
class NullTextInversion(Inverter):
    """Null-text inversion: a DDIM pivot and an unconditional embedding optimised per step."""

    Options = NullTextOptions

    stochastic = False

    def trajectory(self, backbone: Backbone, x0, schedule, n, cond, uncond, guidance_scale, generator):
        """The pivot (DDIM at guidance 1) and the optimised embeddings (deterministic)."""
        o = self.options
        if o.num_inner_steps < 0 or o.learning_rate <= 0 or o.early_stop_epsilon < 0:
            raise ConfigError(
                "null_text needs num_inner_steps >= 0, learning_rate > 0 and early_stop_epsilon >= 0, got "
                f"{o.num_inner_steps}, {o.learning_rate}, {o.early_stop_epsilon}"
            )
        pivot = ddim_inversion_sequence(backbone, x0, schedule, n, cond, None, 1.0, desc="null-text pivot")
        if uncond is None or cond is None:  # guidance 1 or an unconditional model: nothing to optimise
            return pivot, None
        emb, iterations, first, last = optimise_null_text(backbone, pivot, schedule, cond, uncond, guidance_scale, o)
        return pivot, None, {
            "uncond_embeddings": emb,
            "extras": {"null_text_iterations": iterations, "null_text_first_losses": first, "null_text_losses": last},
        }
