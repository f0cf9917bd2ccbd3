"""The result of an inversion and the interface every inverter implements.

Paper indexing: with N = ``num_steps`` and n = N - ``skip`` computed steps,
``xts[i]`` is x_i for i = 0..n (``xts[0]`` = x0; with skip 0, ``xts[N]`` = x_T), ``zs[i-1]``
is z_i (the noise that takes x_i to x_{i-1}) for i = 1..n, and ``timesteps[i-1]`` is the
model timestep of step i for all N steps. An edit that skips ``skip`` steps starts from
``xts[N - skip]`` and uses ``zs[:N - skip]``; inverters compute nothing beyond that.

An inversion may also be the encoded image alone (``encoded_only``: the ``none`` inverter, no
network evaluation): ``xts`` then holds x0 only, and reading a trajectory or regenerating from it
is refused (:meth:`Inversion.require_trajectory`); editors that start from x0 alone (SDEdit,
FlowEdit) take it.

An inversion also says how to regenerate from it (see ``framework/sampling.py``): ``rule``
names its step rule (``ddpm``: eq. 3 with ``zs`` and ``eta``, DDIM where σ = 0; ``edict``: the
coupled pair, whose second sequence is ``coupled``) and ``rule_factory`` builds it (None: eq. 3;
an inverter with its own rule sets it, so the loop needs no table of rules), and ``uncond_embeddings`` is its
unconditional embedding per step (null-text inversion; one row for all steps: negative-prompt
inversion), used instead of the null text wherever an edit applies classifier-free guidance.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from framework.errors import InputError
from framework.schema import DEFAULT_NUM_STEPS

if TYPE_CHECKING:
    from framework.backbone import Backbone
    from framework.conditioning import Cond
    from framework.process import ProcessSchedule


@dataclass
class Inversion:
    """An inverted image (batch B, usually 1): its auxiliary sequence and noise maps."""

    xts: Tensor  # (n+1, B, C, h, w) float32 (float64 for EDICT, whose coupled arithmetic is exact in it)
    zs: Tensor | None  # (n, B, C, h, w) float32; None for deterministic (DDIM) inversions
    timesteps: Tensor  # (N,) paper order: int64 (DDPM), float32 1000·t (flows)
    num_steps: int  # N
    skip: int  # steps not computed at the noisy end: n = N - skip
    eta: float  # the η the noise maps belong to; editors must sample with it
    method: str
    source_prompt: list[str]
    guidance_scale: float
    nfe: int = 0  # network evaluations the inversion took (its wall time: framework.edit.measure_cost)
    extras: dict[str, Any] = field(default_factory=dict)
    encoded_only: bool = False  # True: xts is (1, B, C, h, w), x0 alone (the none inverter)
    rule: str = "ddpm"  # the name of the step rule regenerating from it: ddpm (eq. 3) | edict
    # the factory of that rule (see ``regeneration``); None: eq. 3, framework.sampling.ddpm_regeneration
    rule_factory: Callable[..., Any] | None = None
    rule_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"mix_weight": 0.93}
    coupled: Tensor | None = None  # (n+1, B, C, h, w): EDICT's second sequence y_i
    uncond_embeddings: Tensor | None = None  # (n or 1, 1, L, D): unconditional embedding of step i

    @property
    def deterministic(self) -> bool:
        """Whether regeneration adds no noise (no noise maps: σ = 0 at every step); edits then
        get the DDIM settings of methods that distinguish them (Prompt-to-Prompt)."""
        return self.zs is None

    @property
    def start_step(self) -> int:
        """n = N - skip: the noisiest step the inversion computed."""
        return self.num_steps - self.skip

    @property
    def x0(self) -> Tensor:
        """The inverted x0, (B, C, h, w) float32."""
        return self.xts[0].float()

    @property
    def batch_size(self) -> int:
        return int(self.xts.shape[1])

    def require_trajectory(self, what: str = "this edit") -> None:
        """Refuse an inversion that holds the encoded image only (``encoded_only``)."""
        if self.encoded_only:
            raise InputError(
                f"{what} needs an inversion's trajectory or noise maps, but the {self.method} inverter only "
                "encodes the image; use an inverter (ddpm_edit_friendly, ddim, ...) or an editor that needs no "
                "inversion (sdedit, flowedit)"
            )

    def x_at(self, step: int) -> Tensor:
        """x_step, (B, C, h, w); ``step`` must be in 0..n."""
        if step != 0:
            self.require_trajectory()
        if not 0 <= step <= self.start_step:
            raise InputError(f"step {step} not in the inversion's computed range 0..{self.start_step}")
        return self.xts[step]

    def to(self, device: torch.device | str) -> Inversion:
        """A copy with its tensors on ``device``."""
        return dataclasses.replace(
            self,
            xts=self.xts.to(device),
            zs=None if self.zs is None else self.zs.to(device),
            coupled=None if self.coupled is None else self.coupled.to(device),
            uncond_embeddings=None if self.uncond_embeddings is None else self.uncond_embeddings.to(device),
        )

    def schedule(self, backbone: Backbone, eta: float | None = None) -> ProcessSchedule:
        """The :class:`framework.process.ProcessSchedule` of this inversion's own timesteps (those its
        inverter ran: the backbone's, or shifted by an inverter's ``steps_offset``) for ``eta``
        (default: the inversion's); every regeneration steps through it."""
        eta = self.eta if eta is None else eta
        own = backbone.timesteps(self.num_steps)
        if torch.equal(own, self.timesteps.to(own.device, own.dtype)):
            return backbone.schedule(self.num_steps, eta)
        return backbone.process.discretize(self.timesteps.flip(0), eta)

    def regeneration(
        self,
        backbone: Backbone,
        start: int,
        rows: int,
        *,
        generator: torch.Generator | None = None,
        n_source: int = 0,
        transform: Any = None,
        zs: Any = "inversion",
        shared_noise: bool = False,
    ) -> Any:
        """The step rule that regenerates ``rows`` copies of this inversion from step ``start``
        (a :class:`framework.sampling.StepRule` holding x_start (rows, C, h, w) float32).

        ``transform`` (a function of a (1, C, h, w) latent) changes the start latent of every
        sequence before it is copied (shift); ``zs`` replaces the noise maps (default: the
        inversion's own). The first ``n_source`` rows are source rows; ``shared_noise``: fresh
        noise (no maps, σ > 0) is one draw for every row (see ``DDPMRule``).
        """
        self.require_trajectory()
        factory = self.rule_factory
        if factory is None:
            if self.rule != "ddpm":
                raise InputError(
                    f"the {self.method} inversion names step rule {self.rule!r} but carries no rule_factory; "
                    "an inverter with its own step rule sets both"
                )
            from framework.sampling import ddpm_regeneration

            factory = ddpm_regeneration
        maps = self.zs if isinstance(zs, str) else zs
        return factory(
            self, backbone, start, rows, generator=generator, n_source=n_source, transform=transform, zs=maps,
            shared_noise=shared_noise,
        )

    def check_skip(self, skip: int) -> int:
        """Validate an edit's ``skip`` against this inversion; return the edit's first step."""
        self.require_trajectory()
        if isinstance(skip, bool) or not isinstance(skip, int):
            raise InputError(f"skip must be an integer, got {skip!r}")
        if skip >= self.num_steps or skip < 0:
            raise InputError(
                f"skip must satisfy 0 <= skip < num_steps={self.num_steps}, got skip={skip}"
            )
        if skip < self.skip:
            raise InputError(
                f"the edit skips {skip} steps but the inversion was computed with skip={self.skip}, "
                f"so steps above {self.start_step} were never inverted; invert with skip <= {skip}"
            )
        return self.num_steps - skip


class Inverter(abc.ABC):
    """Turns x0 into an :class:`Inversion`. Subclasses define ``Options`` (a dataclass with at
    least ``guidance_scale``, and ``eta`` for stochastic inverters) and ``trajectory``; the
    shared work (validation, prompts, schedule, timing, counting) is done by ``invert``.
    """

    Options: type
    registered_name: str
    #: True for inverters that extract noise maps (they need eta in (0, 1])
    stochastic: bool = True
    #: True for an inverter whose inversions hold the encoded image only (``none``)
    encodes_only: bool = False

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @property
    def eta(self) -> float:
        """The η of the noise maps this inverter produces (0 for deterministic inverters)."""
        return float(getattr(self.options, "eta", 0.0)) if self.stochastic else 0.0

    def invert(
        self,
        backbone: Backbone,
        x0: Tensor,
        source_prompt: str | Sequence[str],
        *,
        num_steps: int = DEFAULT_NUM_STEPS,
        skip: int = 0,
        generator: torch.Generator | None = None,
    ) -> Inversion:
        """Invert x0 (B, C, h, w) under ``source_prompt``; compute only steps 1..N-skip."""
        from framework.schedule import check_steps

        check_steps(num_steps, skip)
        eta = self.eta
        if self.stochastic and not 0 < eta <= 1:
            raise InputError(
                f"{self.registered_name} needs eta in (0, 1], got {eta}; for eta = 0 use the ddim inverter"
            )
        nfe0 = backbone.nfe
        x0 = as_batch(x0, backbone.device)
        prompts = as_prompts(source_prompt, x0.shape[0])
        schedule = self.schedule(backbone, num_steps, eta)
        guidance = float(self.options.guidance_scale)
        cond = backbone.encode_prompt(prompts)
        uncond = backbone.null_condition() if guidance != 1 else None
        with torch.no_grad():
            out = self.trajectory(
                backbone, x0, schedule, num_steps - skip, cond, uncond, guidance, generator
            )
        xts, zs = out[0], out[1]
        fields = out[2] if len(out) > 2 else {}
        return Inversion(
            xts=xts,
            zs=zs,
            timesteps=schedule.timesteps,
            num_steps=num_steps,
            skip=skip,
            eta=eta,
            method=self.registered_name,
            source_prompt=prompts,
            guidance_scale=guidance,
            nfe=backbone.nfe - nfe0,
            **fields,
        )

    def schedule(self, backbone: Backbone, num_steps: int, eta: float) -> ProcessSchedule:
        """The backbone's schedule for ``num_steps``, or, where the inverter has a ``steps_offset``
        option that is set, the same spacing with that offset (see
        :func:`framework.schedule.offset_schedule`)."""
        offset = getattr(self.options, "steps_offset", None)
        if offset is None:
            return backbone.schedule(num_steps, eta)
        from framework.schedule import offset_schedule

        return offset_schedule(backbone, num_steps, eta, offset, f"{self.registered_name}.steps_offset")

    @abc.abstractmethod
    def trajectory(
        self,
        backbone: Backbone,
        x0: Tensor,
        schedule: ProcessSchedule,
        n: int,
        cond: Cond,
        uncond: Cond,
        guidance_scale: float,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, dict[str, Any]]:
        """Steps 1..n from x0 (B, C, h, w): (xts (n+1, B, C, h, w), zs (n, B, C, h, w) or None),
        optionally with a dict of further :class:`Inversion` fields (``rule``, ``coupled``,
        ``uncond_embeddings``, ``extras``, ...). Runs under ``torch.no_grad``."""


def as_batch(x0: Tensor, device: torch.device) -> Tensor:
    """Accept (C, h, w) or (B, C, h, w); return (B, C, h, w) float32 on ``device``."""
    if not isinstance(x0, Tensor):
        raise InputError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if x0.dim() == 3:
        x0 = x0[None]
    if x0.dim() != 4:
        raise InputError(f"x0 must have shape (B, C, h, w) or (C, h, w), got {tuple(x0.shape)}")
    return x0.to(device=device, dtype=torch.float32)


def as_prompts(prompt: str | Sequence[str], batch: int, what: str = "source_prompt") -> list[str]:
    """One prompt per batch row: a string is repeated, a list must have ``batch`` strings."""
    if isinstance(prompt, str):
        return [prompt] * batch
    prompts = list(prompt)
    if not all(isinstance(p, str) for p in prompts):
        raise InputError(f"{what} must be a string or a list of strings, got {prompt!r}")
    if len(prompts) != batch:
        raise InputError(f"{what} has {len(prompts)} prompts for a batch of {batch} images")
    return prompts
