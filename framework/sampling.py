"""The reverse (generative) loop shared by the editors, and the editor interface.

``reverse_process`` runs eq. 3, x_{i-1} = μ̂_i(x_i) + σ_i z_i, for i = start..1, with the noise
maps fixed from an inversion (broadcast over the K target rows) or drawn fresh when none are
given. Every target row runs in one batched forward pass per step.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from framework import progress
from framework.errors import InputError
from framework.inversion import Inversion
from framework.random import randn
from framework.schedule import Schedule

#: ``noise_fn(i, x_i, eps, z) -> z``: may change the noise of step i before it is added.
NoiseFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]
#: ``eps_fn(i, x_i) -> eps``: replaces the plain guided noise prediction of step i.
EpsFn = Callable[[int, Tensor], Tensor]


def reverse_process(
    backbone: Any,
    x_start: Tensor,
    schedule: Schedule,
    start_step: int,
    cond: Tensor | None,
    uncond: Tensor | None,
    guidance_scale: float,
    zs: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise_fn: NoiseFn | None = None,
    eps_fn: EpsFn | None = None,
    desc: str = "edit",
) -> Tensor:
    """Denoise ``x_start`` (K, C, h, w) = x_{start_step} down to x_0, float32.

    ``zs[i-1]`` (1 or K rows) is z_i; where ``zs`` is None and σ_i > 0, z_i is drawn from
    ``generator``. ``eps_fn`` overrides the noise prediction (attention-controlling editors).
    """
    x = x_start.float()
    sigmas = schedule.sigma
    for i in progress.steps(range(start_step, 0, -1), desc=desc, total=start_step):
        t = int(schedule.timesteps[i - 1])
        if eps_fn is not None:
            eps = eps_fn(i, x)
        else:
            eps = backbone.predict_noise(x, t, cond, uncond, guidance_scale)
        mu = schedule.mu(x, eps, i)
        sigma = float(sigmas[i - 1])
        if sigma > 0:
            if zs is not None:
                z = zs[i - 1].to(x.device)
                if z.shape[0] != x.shape[0]:
                    z = z.expand_as(x)
            else:
                z = randn(x.shape, generator, x.device)
            if noise_fn is not None:
                z = noise_fn(i, x, eps, z)
            x = mu + sigma * z
        else:
            x = mu
    return x


class Editor(abc.ABC):
    """Edits an :class:`Inversion` toward target prompts. Subclasses define ``Options``."""

    Options: type
    registered_name: str
    #: whether the editor needs a text-conditional backbone
    needs_prompts: bool = True

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abc.abstractmethod
    def edit(
        self,
        backbone: Any,
        inversion: Inversion,
        source_prompt: str,
        target_prompts: Sequence[str],
        *,
        skip: int = 36,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Return one latent per target prompt, (K, C, h, w) float32."""

    def check_inputs(self, backbone: Any, inversion: Inversion, target_prompts: Sequence[str] | str) -> list[str]:
        """The checks a prompt-driven edit starts with (targets, a conditional backbone, one
        image); returns the targets as a list."""
        targets = check_targets(target_prompts)
        check_conditional(self, backbone)
        check_single_image(inversion)
        return targets


def check_targets(target_prompts: Sequence[str] | str) -> list[str]:
    """A non-empty list of strings (a single string is one target)."""
    if isinstance(target_prompts, str):
        return [target_prompts]
    targets = list(target_prompts) if target_prompts is not None else []
    if not targets:
        raise InputError("target_prompts is empty; give at least one target prompt (--target TEXT)")
    bad = [t for t in targets if not isinstance(t, str)]
    if bad:
        raise InputError(f"target prompts must be strings, got {bad[0]!r}")
    return targets


def check_conditional(editor: "Editor", backbone: Any) -> None:
    """Prompt-driven editors need a text-conditional backbone."""
    if getattr(editor, "needs_prompts", True) and not getattr(backbone, "conditional", True):
        raise InputError(
            f"the {getattr(editor, 'registered_name', type(editor).__name__)} editor is driven by "
            f"prompts but the backbone {type(backbone).__name__} is unconditional; use a "
            "prompt-free editor (shift, color_strokes, sdedit) or a text-conditional backbone"
        )


def check_single_image(inversion: Inversion) -> None:
    """Editors edit one image at a time (all its targets as one batch)."""
    if inversion.batch_size != 1:
        raise InputError(
            f"editors take the inversion of one image, got a batch of {inversion.batch_size}; "
            "invert and edit the images one by one"
        )


def expand_rows(x: Tensor, k: int) -> Tensor:
    """(1, ...) -> (k, ...) as a real copy (safe to write into)."""
    return x.expand(k, *x.shape[1:]).clone()


def prompt_free_conditioning(
    backbone: Any, target_prompts: Sequence[str] | str | None, guidance_scale: float
) -> tuple[int, Tensor | None, Tensor | None]:
    """(K, cond, uncond) for editors that do not need prompts (shift, color strokes, SDEdit).

    A conditional backbone is conditioned on the target prompts as given (K = their number;
    ``uncond`` only where ``guidance_scale`` != 1). An unconditional one ignores the prompts:
    K is their number, or 1 when none are given, and both conditionings are None.
    """
    if not getattr(backbone, "conditional", True):
        if target_prompts is None or (not isinstance(target_prompts, str) and len(target_prompts) == 0):
            return 1, None, None
        return len(check_targets(target_prompts)), None, None
    targets = check_targets(target_prompts)
    cond = backbone.encode_prompt(targets)
    uncond = backbone.null_condition() if guidance_scale != 1 else None
    return len(targets), cond, uncond
