"""The one reverse (generative) loop every editor runs, and the editor interface.

Design. An :class:`~framework.inversion.Inversion` decides how to regenerate from it:

* its **step rule** (:class:`StepRule`, built by ``Inversion.regeneration``): eq. 3,
  x_{i-1} = μ̂_i(x_i) + σ_i z_i with the inversion's noise maps (:class:`DDPMRule`; σ = 0 is
  DDIM), or another update such as EDICT's coupled pair (``plugins/inverters/edict.py``);
* its **per-step conditioning**: an unconditional embedding per step (null-text inversion) or
  one for all steps (negative-prompt inversion), used in place of the null text wherever the
  edit applies classifier-free guidance (:class:`Guidance`).

An editor chooses the rows (targets, and a source row for the attention-controlling editors),
their prompts and guidance scales, and adds what it needs through :class:`StepHook` objects:
attention processors or forward hooks installed for the loop only (``installed``), per-step
switches (``begin_step``, ``before_eval``/``after_eval`` around every network evaluation),
latent updates (``latents`` before a step, ``after_step`` after it) and noise changes
(``noise``). :func:`denoise` is the loop; ``reverse_process`` is its short form for a plain
eq. 3 pass (kept for scripts and tests).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from framework import progress
from framework.conditioning import replace_rows
from framework.errors import InputError
from framework.inversion import Inversion
from framework.process import ProcessSchedule
from framework.random import randn
from framework.schema import DEFAULT_SKIP

if TYPE_CHECKING:
    from framework.backbone import Backbone
    from framework.conditioning import Cond

#: ``noise_fn(i, x_i, eps, z) -> z``: may change the noise of step i before it is added.
NoiseFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]
#: ``eps_fn(i, x_i) -> eps``: replaces the plain guided noise prediction of step i.
EpsFn = Callable[[int, Tensor], Tensor]


# ----------------------------------------------------------------------------- conditioning
@dataclass
class Guidance:
    """Classifier-free guidance of a batch of B rows at step i.

    ``cond`` and ``uncond`` have 1 or B rows; ``uncond`` None means no guidance (ε = ε_c).
    ``per_step`` (n or 1 rows of (1, ...)) is the inversion's unconditional embedding of step i
    (row i-1, or row 0 for all steps); it replaces ``uncond`` in the rows ``per_step_rows``
    (all rows when None).
    """

    cond: Cond
    uncond: Cond
    scale: float | Tensor
    per_step: Tensor | None = None
    per_step_rows: slice | None = None

    def uncond_at(self, i: int, batch: int) -> Cond:
        """The unconditional embedding of step i for a batch of ``batch`` rows."""
        if self.uncond is None or self.per_step is None:
            return self.uncond
        u = self.per_step[min(i - 1, self.per_step.shape[0] - 1)].to(self.uncond.device, self.uncond.dtype)
        if self.per_step_rows is None:
            return u
        return replace_rows(self.uncond, self.per_step_rows, u, batch)

    def eps(self, backbone: Backbone, x: Tensor, t: int, i: int) -> Tensor:
        """ε̂(x_i, t) of every row, (B, C, h, w) float32: one batched forward pass."""
        return backbone.predict_noise(x, t, self.cond, self.uncond_at(i, x.shape[0]), self.scale)


def inversion_guidance(
    backbone: Backbone,
    inversion: Inversion,
    cond: Cond,
    scale: float | Tensor,
    uncond: Cond = None,
    per_step_rows: slice | None = None,
) -> Guidance:
    """Guidance for an edit of ``inversion``: no unconditional branch where every scale is 1;
    else ``uncond`` (default: the null text), with the inversion's per-step unconditional
    embedding (if it has one) in ``per_step_rows`` (default: every row)."""
    if isinstance(scale, Tensor):
        needs = bool((scale != 1).any())
    else:
        needs = float(scale) != 1
    if not needs:
        return Guidance(cond, None, scale)
    base = uncond if uncond is not None else backbone.null_condition()
    return Guidance(cond, base, scale, inversion.uncond_embeddings, per_step_rows)


class _EpsOverride:
    """Guidance given as a function ``eps_fn(i, x)`` (``reverse_process``'s ``eps_fn``)."""

    def __init__(self, fn: EpsFn) -> None:
        self.fn = fn

    def eps(self, backbone: Backbone, x: Tensor, t: int, i: int) -> Tensor:
        return self.fn(i, x)


# ----------------------------------------------------------------------------- step rules
class StepRule(abc.ABC):
    """How one reverse step is taken; holds the loop's state (one or more latent sequences,
    each (B, C, h, w) float32). Built by ``Inversion.regeneration`` (or directly)."""

    schedule: ProcessSchedule

    @abc.abstractmethod
    def sequences(self) -> list[Tensor]:
        """The current latents of every sequence (the first is the output)."""

    @abc.abstractmethod
    def set_sequences(self, xs: list[Tensor]) -> None:
        """Replace the current latents (same number of sequences)."""

    @abc.abstractmethod
    def step(self, i: int, eps_fn: Callable[[Tensor], Tensor], noise_fn: NoiseFn | None) -> None:
        """Take step i (x_i -> x_{i-1}); ``eps_fn(x)`` is the guided prediction at step i."""

    def apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        """x <- fn(x) for every sequence (latent updates of the hooks)."""
        self.set_sequences([fn(x) for x in self.sequences()])

    def follow(self, i: int, rows: slice) -> None:
        """Set ``rows`` of every sequence to the inversion's stored state at step i."""
        raise InputError(f"{type(self).__name__} has no stored trajectory to follow")

    def output(self) -> Tensor:
        """The result, (B, C, h, w) float32."""
        return self.sequences()[0]

    @property
    def evaluations_per_step(self) -> int:
        """Network evaluations the rule makes per step (before any hook's own)."""
        return 1


class DDPMRule(StepRule):
    """Eq. 3 (DDIM's formula for every η; σ = 0 is DDIM sampling).

    ``zs[i-1]`` (1 or B rows) is z_i. Without noise maps and σ_i > 0 the rows after the first
    ``n_source`` draw fresh noise from ``generator`` (B - n_source rows in one draw) and the
    source rows get none; with ``shared_noise`` one draw of one row is added to every row
    (Prompt-to-Prompt's choice: the rows then differ only by their prompts). ``xts`` (the
    inversion's trajectory, (n+1, 1, C, h, w)) lets the source rows follow the stored states
    (:meth:`follow`).
    """

    def __init__(
        self,
        schedule: ProcessSchedule,
        x: Tensor,
        zs: Tensor | None = None,
        generator: torch.Generator | None = None,
        n_source: int = 0,
        xts: Tensor | None = None,
        shared_noise: bool = False,
    ) -> None:
        self.schedule = schedule
        self.shared_noise = shared_noise
        self.x = x
        self.zs = zs
        self.generator = generator
        self.n_source = n_source
        self.xts = xts

    def sequences(self) -> list[Tensor]:
        return [self.x]

    def set_sequences(self, xs: list[Tensor]) -> None:
        (self.x,) = xs

    def follow(self, i: int, rows: slice) -> None:
        if self.xts is None:
            super().follow(i, rows)
        self.x[rows] = self.xts[i][0].to(self.x.device, torch.float32)

    def step(self, i: int, eps_fn: Callable[[Tensor], Tensor], noise_fn: NoiseFn | None) -> None:
        x = self.x
        eps = eps_fn(x)
        mu = self.schedule.mu(x, eps, i)
        # with noise maps, the scale they were extracted with (σ_i, or a deterministic step's
        # residual scale: ProcessSchedule.map_scale); fresh noise, σ_i
        sigma = self.schedule.sigma_at(i) if self.zs is None else self.schedule.map_scale(i)
        if sigma == 0:
            self.x = mu
            return
        if self.zs is not None:
            z = self.zs[i - 1].to(x.device, torch.float32)
            if z.shape[0] != x.shape[0]:
                z = z.expand_as(x)
        elif self.shared_noise:
            z = randn((1, *x.shape[1:]), self.generator, x.device).expand_as(x)
        else:
            k = x.shape[0] - self.n_source
            z_t = randn((k, *x.shape[1:]), self.generator, x.device)
            z = torch.cat([torch.zeros_like(x[: self.n_source]), z_t]) if self.n_source else z_t
        if noise_fn is not None:
            z = noise_fn(i, x, eps, z)
        self.x = mu + sigma * z


def ddpm_regeneration(
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
) -> DDPMRule:
    """The :class:`DDPMRule` of an inversion: its η, its noise maps, its trajectory."""
    x = inversion.x_at(start).to(backbone.device)
    if transform is not None:
        x = transform(x)
    return DDPMRule(
        inversion.schedule(backbone),
        expand_rows(x, rows).float(),
        zs,
        generator,
        n_source,
        inversion.xts,
        shared_noise,
    )



# ----------------------------------------------------------------------------- hooks
class StepHook:
    """What an editor adds to the loop; every method is optional (a no-op here).

    Call order per step i (from the noisy end): ``begin_step``; ``latents`` on every sequence;
    per network evaluation ``before_eval`` / ``after_eval``; ``noise`` (stochastic steps);
    ``end_step``; ``after_step`` on every sequence. ``installed`` is entered around the whole
    loop (processors, forward hooks) and left also when the loop raises.
    """

    def installed(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def begin_step(self, i: int) -> None:
        pass

    def latents(self, i: int, x: Tensor) -> Tensor:
        return x

    def before_eval(self, i: int) -> None:
        pass

    def after_eval(self, i: int) -> None:
        pass

    def noise(self, i: int, x: Tensor, eps: Tensor, z: Tensor) -> Tensor:
        return z

    def end_step(self, i: int) -> None:
        pass

    def after_step(self, i: int, x: Tensor) -> Tensor:
        return x


def _overrides(hook: StepHook, name: str) -> bool:
    """Whether ``hook`` overrides the method ``name`` (the loop skips the others)."""
    return getattr(type(hook), name) is not getattr(StepHook, name)


class FollowInversion(StepHook):
    """Source rows take x_i from the inversion's stored trajectory before every step."""

    def __init__(self, rule: StepRule, rows: slice) -> None:
        self.rule = rule
        self.rows = rows

    def begin_step(self, i: int) -> None:
        self.rule.follow(i, self.rows)


class NoiseHook(StepHook):
    """A ``noise_fn(i, x, eps, z) -> z`` as a hook."""

    def __init__(self, fn: NoiseFn) -> None:
        self.fn = fn

    def noise(self, i: int, x: Tensor, eps: Tensor, z: Tensor) -> Tensor:
        return self.fn(i, x, eps, z)


# ----------------------------------------------------------------------------- the loop
def denoise(
    backbone: Backbone,
    rule: StepRule,
    start_step: int,
    guidance: Any,
    hooks: Sequence[StepHook] = (),
    desc: str = "edit",
) -> Tensor:
    """Run steps ``start_step``..1 of ``rule`` with ``guidance`` (anything with
    ``eps(backbone, x, t, i)``, usually :class:`Guidance`) and ``hooks``; return x_0 rows."""
    schedule = rule.schedule
    latents = [h for h in hooks if _overrides(h, "latents")]
    after = [h for h in hooks if _overrides(h, "after_step")]
    noisy = [h for h in hooks if _overrides(h, "noise")]
    noise_fn: NoiseFn | None = None
    if noisy:

        def noise_fn(i: int, x: Tensor, eps: Tensor, z: Tensor) -> Tensor:
            for h in noisy:
                z = h.noise(i, x, eps, z)
            return z

    with contextlib.ExitStack() as stack:
        for h in hooks:
            stack.enter_context(h.installed())
        for i in progress.steps(range(start_step, 0, -1), desc=desc, total=start_step):
            t = schedule.timestep(i)
            for h in hooks:
                h.begin_step(i)
            for h in latents:
                rule.apply(lambda x, h=h: h.latents(i, x))

            def eps_fn(x: Tensor) -> Tensor:
                for h in hooks:
                    h.before_eval(i)
                eps = guidance.eps(backbone, x, t, i)
                for h in hooks:
                    h.after_eval(i)
                return eps

            rule.step(i, eps_fn, noise_fn)
            for h in hooks:
                h.end_step(i)
            for h in after:
                rule.apply(lambda x, h=h: h.after_step(i, x))
    return rule.output()


def reverse_process(
    backbone: Backbone,
    x_start: Tensor,
    schedule: ProcessSchedule,
    start_step: int,
    cond: Cond,
    uncond: Cond,
    guidance_scale: float,
    zs: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise_fn: NoiseFn | None = None,
    eps_fn: EpsFn | None = None,
    desc: str = "edit",
) -> Tensor:
    """Eq. 3 from ``x_start`` (K, C, h, w) = x_{start_step} down to x_0, float32: :func:`denoise`
    with a :class:`DDPMRule`.

    ``zs[i-1]`` (1 or K rows) is z_i; where ``zs`` is None and σ_i > 0, z_i is drawn from
    ``generator``. ``eps_fn`` overrides the noise prediction.
    """
    rule = DDPMRule(schedule, x_start.float(), zs, generator)
    guidance = _EpsOverride(eps_fn) if eps_fn is not None else Guidance(cond, uncond, guidance_scale)
    hooks = [NoiseHook(noise_fn)] if noise_fn is not None else []
    return denoise(backbone, rule, start_step, guidance, hooks, desc=desc)


class Editor(abc.ABC):
    """Edits an :class:`Inversion` toward target prompts. Subclasses define ``Options``."""

    Options: type
    registered_name: str
    #: whether the editor needs a text-conditional backbone
    needs_prompts: bool = True
    #: False for an editor that starts from the encoded input (x0) alone and uses none of the
    #: inversion's noise maps or latents: the inversion it is given is computed but not needed
    needs_inversion: bool = True

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abc.abstractmethod
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
        """Return one latent per target prompt, (K, C, h, w) float32."""

    def prompt_options(self) -> list[Any]:
        """The options whose values are prompts, as :class:`framework.prompts.PromptOption`\\ s:
        they are checked against the backbone's text encoder with the source and target prompts,
        before the inversion. The default: none."""
        return []

    def check_inputs(self, backbone: Backbone, inversion: Inversion, target_prompts: Sequence[str] | str) -> list[str]:
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


def check_conditional(editor: Editor, backbone: Backbone) -> None:
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
    backbone: Backbone, target_prompts: Sequence[str] | str | None, guidance_scale: float
) -> tuple[int, Cond, Cond]:
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
