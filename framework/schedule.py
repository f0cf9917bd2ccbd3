"""The DDPM/DDIM schedule in paper indexing: kept as a name for :mod:`framework.process`, and
the inference timestep grid with another ``steps_offset``.

``Schedule`` (what ``Backbone.schedule(num_steps, eta)`` returns), ``make_schedule`` and
``check_steps`` live in :mod:`framework.process`, with the process interface they implement.
"""

from __future__ import annotations

from typing import Any

from framework.errors import InputError
from framework.process import DDPMSchedule, ProcessSchedule, Schedule, check_steps, make_schedule

__all__ = ["DDPMSchedule", "ProcessSchedule", "Schedule", "check_steps", "make_schedule", "offset_schedule"]


def offset_schedule(backbone: Any, num_steps: int, eta: float, steps_offset: int, option: str) -> ProcessSchedule:
    """The backbone's schedule for ``num_steps`` with its scheduler's ``steps_offset`` replaced by
    ``steps_offset``: the same spacing, every timestep moved by the difference. With Stable
    Diffusion's scheduler (offset 1: 981 ... 1 for 50 steps) offset 0 gives 980 ... 0, the
    timesteps of reference codes that build ``DDIMScheduler`` without ``steps_offset``; there
    step 1 runs from ᾱ_0 to the final ᾱ (= ᾱ_0 with ``set_alpha_to_one`` False): a step that
    changes nothing, as theirs."""
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise InputError(f"{option} must be null (the backbone's) or an integer >= 0, got {steps_offset!r}")
    if backbone.process.float_timesteps:
        raise InputError(
            f"{option} moves the integer timesteps of a DDPM scheduler, but {type(backbone).__name__} is a "
            "flow-matching model (times in [0, 1]); leave it null"
        )
    config = getattr(getattr(backbone, "scheduler", None), "config", None)
    own = int(getattr(config, "steps_offset", 0) or 0)
    desc = backbone.scheduler_timesteps(num_steps) - own + steps_offset
    limit = int(backbone.alphas_cumprod.shape[0])
    if int(desc.max()) >= limit:
        raise InputError(
            f"{option}={steps_offset} puts the last timestep of {num_steps} steps at {int(desc.max())} >= {limit}; "
            f"use a smaller offset or fewer steps"
        )
    return backbone.process.discretize(desc, eta)
