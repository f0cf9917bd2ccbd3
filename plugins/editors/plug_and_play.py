"""Plug-and-Play diffusion features (Tumanyan et al., CVPR 2023), on any inversion.

A source branch regenerates the source image from the inversion while target branches generate
the edit; in the first steps the target branches' decoder features are replaced by the source
branch's:

- residual-block features (the output of the residual branch, ``resnet.conv2``, before the skip
  connection is added, as in the PnP code) at ``feature_layers``, during the first
  ``feature_injection`` fraction of the edit's steps (default 0.8);
- self-attention queries and keys (``attn1.to_q``/``attn1.to_k``; values stay the target's) in
  every transformer block under ``attention_layers``, during the first ``attention_injection``
  fraction of the steps (default 0.5).

Default layers are the PnP paper's for Stable Diffusion: features from ``up_blocks.1.resnets.1``
(decoder layer 4) and self-attention from decoder layers 4-11 (``up_blocks.1.attentions.1..2``,
``up_blocks.2.attentions.*``, ``up_blocks.3.attentions.*``). On a smaller UNet missing layers
are mapped by :func:`plugins.editors.unet_hooks.resolve_layers` (block index clamped to the last
block, then layer index to the block's last layer): on the tiny test model the features come
from ``up_blocks.1.resnets.1`` and the attention from ``up_blocks.1.attentions.0..1``.

The source branch uses the source prompt and the inversion's own guidance scale, step rule and
unconditional embeddings (the one reverse loop of ``framework/sampling.py``; the injections are
a step hook), so with edit-friendly, CycleDiffusion or EDICT inversions it reproduces the
inversion's sequence exactly; with a DDIM inversion (no maps, η = 0) it is DDIM sampling from
the inverted x_T and follows the inverted trajectory. A ``negative_prompt`` replaces the
unconditional embedding of the target branches only. ``source_latents: inversion`` instead takes x_i of the source
branch from the stored trajectory at every step (what the PnP code does with its saved DDIM
latents). Source and targets run as one batch per step, source first: the classifier-free
guidance batch is [uncond: source, t_1..t_K; cond: source, t_1..t_K], and the unconditional
(conditional) target rows receive the unconditional (conditional) source row's activations.
The hooks exist only during the call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from framework.errors import ConfigError
from framework.inversion import Inversion
from framework.registry import EDITORS
from framework.sampling import Editor, FollowInversion, StepHook, denoise, inversion_guidance
from plugins.editors.unet_hooks import (
    attention_modules,
    broadcast_first_row,
    check_source_latents,
    follows_inversion,
    forward_hooks,
    resolve_layers,
    unet_of,
)

#: PnP's feature layer for Stable Diffusion (decoder layer 4)
PNP_FEATURE_LAYERS = ("up_blocks.1.resnets.1",)
#: PnP's self-attention layers for Stable Diffusion (decoder layers 4-11)
PNP_ATTENTION_LAYERS = (
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2",
    "up_blocks.2.attentions.0",
    "up_blocks.2.attentions.1",
    "up_blocks.2.attentions.2",
    "up_blocks.3.attentions.0",
    "up_blocks.3.attentions.1",
    "up_blocks.3.attentions.2",
)


@dataclass
class PlugAndPlayOptions:
    """Options of the ``plug_and_play`` editor (defaults: the PnP paper's)."""

    guidance_scale: float = 7.5  # classifier-free guidance of the target branches
    feature_injection: float = 0.8  # fraction of the edit's steps with feature injection
    attention_injection: float = 0.5  # fraction of the edit's steps with q/k injection
    feature_layers: list[str] = field(default_factory=lambda: list(PNP_FEATURE_LAYERS))
    attention_layers: list[str] = field(default_factory=lambda: list(PNP_ATTENTION_LAYERS))
    negative_prompt: str = ""  # unconditional prompt of the target branches ("": null text)
    source_latents: str = "regenerate"  # regenerate | inversion (see the module docstring)
    targets_per_batch: int = 0  # targets per batch with the source row (0: all at once)


class _Injection(StepHook):
    """Which injections are on for the current step, and the batch's group size (1 + K); the
    forward hooks exist while the loop runs."""

    def __init__(self, group: int, start: int, n_feat: int, n_attn: int) -> None:
        self.group = group
        self.start = start
        self.n_feat = n_feat
        self.n_attn = n_attn
        self.features = False
        self.attention = False
        self.pairs: list = []

    def installed(self):  # noqa: ANN201
        return forward_hooks(self.pairs)

    def begin_step(self, i: int) -> None:
        done = self.start - i  # steps already taken
        self.features = done < self.n_feat
        self.attention = done < self.n_attn

    def feature_hook(self, module, inputs, output: Tensor):  # noqa: ANN001, ANN201
        return broadcast_first_row(output, self.group) if self.features else None

    def attention_hook(self, module, inputs, output: Tensor):  # noqa: ANN001, ANN201
        return broadcast_first_row(output, self.group) if self.attention else None


def injection_steps(fraction: float, n: int) -> int:
    """How many of the edit's n steps (from the noisy end) get an injection: ⌊fraction·n⌋."""
    return int(math.floor(fraction * n + 1e-9))


@EDITORS.register("plug_and_play")
class PlugAndPlay(Editor):
    """Inject the source branch's decoder features and self-attention into the targets."""

    Options = PlugAndPlayOptions

    def _check_options(self) -> None:
        o = self.options
        for key in ("feature_injection", "attention_injection"):
            v = getattr(o, key)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"plug_and_play.{key} must be a fraction in [0, 1], got {v}")
        if o.targets_per_batch < 0:
            raise ConfigError(
                f"plug_and_play.targets_per_batch must be >= 0 (0: all targets), got {o.targets_per_batch}"
            )
        check_source_latents(o.source_latents, "plug_and_play")

    @torch.no_grad()
    def edit(
        self,
        backbone,  # noqa: ANN001
        inversion: Inversion,
        source_prompt: str,
        target_prompts: Sequence[str],
        *,
        skip: int = 36,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Return (K, C, h, w) float32 latents, one per target prompt."""
        targets = self.check_inputs(backbone, inversion, target_prompts)
        self._check_options()
        o = self.options
        unet = unet_of(backbone, "plug_and_play")
        feature_layers = resolve_layers(unet, o.feature_layers, "plug_and_play.feature_layers")
        attention_layers = resolve_layers(unet, o.attention_layers, "plug_and_play.attention_layers")
        start = inversion.check_skip(skip)
        source = source_prompt if isinstance(source_prompt, str) else inversion.source_prompt[0]
        per = o.targets_per_batch or len(targets)
        out = [
            self._edit_batch(
                backbone, unet, inversion, source, targets[k : k + per], start, feature_layers,
                attention_layers, generator,
            )
            for k in range(0, len(targets), per)
        ]
        return torch.cat(out)

    def _edit_batch(
        self,
        backbone,  # noqa: ANN001
        unet: torch.nn.Module,
        inversion: Inversion,
        source: str,
        targets: list[str],
        start: int,
        feature_layers: list[str],
        attention_layers: list[str],
        generator: torch.Generator | None,
    ) -> Tensor:
        """The source row and K targets from x_start down to x_0: (K, C, h, w)."""
        o = self.options
        k = len(targets)
        cond = torch.cat([backbone.encode_prompt([source]), backbone.encode_prompt(targets)])
        null = backbone.null_condition()
        uncond = null
        if o.negative_prompt:
            uncond = torch.cat([null, backbone.encode_prompt([o.negative_prompt]).expand(k, -1, -1)])
        scale = torch.tensor([inversion.guidance_scale] + [o.guidance_scale] * k, dtype=torch.float32)
        # the inversion's own unconditional embedding: every row, or the source row where the
        # targets have a negative prompt
        guidance = inversion_guidance(
            backbone, inversion, cond, scale, uncond, slice(0, 1) if o.negative_prompt else None
        )
        rule = inversion.regeneration(backbone, start, 1 + k, generator=generator, n_source=1)
        n_feat = injection_steps(o.feature_injection, start)
        n_attn = injection_steps(o.attention_injection, start)

        ctl = _Injection(1 + k, start, n_feat, n_attn)
        ctl.pairs = [(unet.get_submodule(name).conv2, ctl.feature_hook) for name in feature_layers]
        for name in attention_layers:
            for attn in attention_modules(unet, name, "attn1"):
                ctl.pairs += [(attn.to_q, ctl.attention_hook), (attn.to_k, ctl.attention_hook)]
        hooks: list[StepHook] = []
        if follows_inversion(o.source_latents, inversion, rule.schedule):
            hooks.append(FollowInversion(rule, slice(0, 1)))
        hooks.append(ctl)
        return denoise(backbone, rule, start, guidance, hooks, desc="plug_and_play")[1:]
