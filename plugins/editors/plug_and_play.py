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
from ``up_blocks.1.resnets.1`` and the attention from ``up_blocks.1.attentions.0..1``. On SDXL
(three decoder levels: 32², 64² with attention, 128² without, at 1024²) the same rule takes the
features from ``up_blocks.1.resnets.1`` and the attention from every layer of ``up_blocks.1``
(each of them two transformer blocks deep): the layers are placed by the decoder's structure,
which SDXL shares with the digits model (see :mod:`plugins.editors.unet_hooks`).

**The source branch** (``source_branch``):

- ``empty_prompt`` (default; what the pnp-diffusers code computes): one source row x_i^src,
  conditioned on the empty prompt "" without guidance, evaluated in the same batch as the
  targets. Its features and q/k are copied into *both* guidance rows (unconditional and
  conditional) of every target. One network pass per step over the rows
  ``[source (""), targets (negative prompt) ×K, targets (target prompt) ×K]`` (1 + 2K rows;
  1 + K where the target guidance scale is 1). The source row's own prediction moves nothing.
- ``guided`` (this project's earlier variant): the source rows are conditioned as the inversion
  was (source prompt, the inversion's guidance scale and unconditional embeddings), one per
  guidance half: the batch is ``[uncond: source, t_1..t_K; cond: source, t_1..t_K]`` and the
  unconditional (conditional) target rows receive the unconditional (conditional) source row's
  activations. Injected features then carry the source prompt, which the reference's do not.

**How the source row moves** (``source_latents``):

- ``inversion`` (default; the reference's saved DDIM latents): x_i^src is the inversion's stored
  x_i at every step. With edit-friendly, CycleDiffusion and EDICT inversions this is exactly
  the sequence the inversion's step rule regenerates; with DDIM it is the inverted trajectory
  itself (the reference), not DDIM sampling from x_T. EDICT's step evaluates the network
  twice; its source row then also gets the inversion's guided prediction (the rows of
  ``regenerate``), so its half step inside the step is EDICT's exact intermediate too.
- ``regenerate``: the source row takes the inversion's own step rule with the inversion's own
  guided prediction (source prompt, guidance scale, per-step unconditional embeddings of
  null-text / negative-prompt inversion), so with edit-friendly, CycleDiffusion or EDICT
  inversions it reproduces the stored sequence, and with DDIM it is DDIM sampling from x_T.
  With ``empty_prompt`` this costs extra rows for that prediction: the source prompt's row,
  and the unconditional row unless it is the empty prompt itself (plain null text), in which
  case the injection row is shared (2 + 2K rows for an edit-friendly inversion at 3.5).

**Skip > 0** (the reference always runs all its steps, so there is no reference): the source
row and the targets start from the inversion's x_{N-skip}; the source row follows the stored
x_i (``inversion``) or regenerates from x_{N-skip} (``regenerate``); the injections cover the
first ⌊fraction · (N - skip)⌋ steps of the edit (fractions of the steps actually taken, as
with skip 0).

``negative_prompt`` replaces the unconditional embedding of the *target* rows only (default:
the reference config's ``ugly, blurry, black, low res, unrealistic``; ``""`` gives the null
text, or the inversion's per-step unconditional embeddings where it has them). The forward
hooks exist only during the call, also when it raises; the attention processors are never
replaced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from framework.backbone import guide
from framework.conditioning import Conditioning, broadcast_rows, cat_rows, num_rows
from framework.errors import ConfigError, InputError
from framework.inversion import Inversion
from framework.prompts import PromptOption
from framework.registry import EDITORS
from framework.sampling import (
    Editor,
    FollowInversion,
    Guidance,
    StepHook,
    denoise,
    inversion_guidance,
)
from framework.schema import DEFAULT_SKIP
from plugins.editors.unet_hooks import (
    attention_modules,
    broadcast_first_row,
    check_source_latents,
    follows_inversion,
    forward_hooks,
    resolve_layers,
    unet_of,
)

if TYPE_CHECKING:
    from framework.backbone import Backbone

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
#: pnp-diffusers' default negative prompt (its config_pnp.yaml)
PNP_NEGATIVE_PROMPT = "ugly, blurry, black, low res, unrealistic"
#: values of ``source_branch``
SOURCE_BRANCHES = ("empty_prompt", "guided")


@dataclass
class PlugAndPlayOptions:
    """Options of the ``plug_and_play`` editor (defaults: the pnp-diffusers code's)."""

    guidance_scale: float = 7.5  # classifier-free guidance of the target branches
    feature_injection: float = 0.8  # fraction of the edit's steps with feature injection
    attention_injection: float = 0.5  # fraction of the edit's steps with q/k injection
    feature_layers: list[str] = field(default_factory=lambda: list(PNP_FEATURE_LAYERS))
    attention_layers: list[str] = field(default_factory=lambda: list(PNP_ATTENTION_LAYERS))
    # unconditional prompt of the target rows ("": the null text / the inversion's own)
    negative_prompt: str = PNP_NEGATIVE_PROMPT
    source_branch: str = "empty_prompt"  # empty_prompt | guided (see the module docstring)
    source_latents: str = "inversion"  # inversion | regenerate (see the module docstring)
    targets_per_batch: int = 0  # targets per batch with the source row (0: all at once)


class _Injection(StepHook):
    """Which injections are on for the current step and how they spread over the batch; the
    forward hooks exist while the loop runs.

    ``group`` > 0: within each consecutive group of ``group`` rows the first row is copied over
    the others (the ``guided`` batch). ``group`` = 0: row 0 (the empty-prompt source row) is
    copied over every row from ``n_source`` on (the target rows of both guidance halves); the
    rows before ``n_source`` (the source's own) keep their values.
    """

    def __init__(self, start: int, n_feat: int, n_attn: int, group: int = 0, n_source: int = 1) -> None:
        self.group = group
        self.n_source = n_source
        self.start = start
        self.n_feat = n_feat
        self.n_attn = n_attn
        self.features = False
        self.attention = False
        self.pairs: list = []

    def installed(self):
        return forward_hooks(self.pairs)

    def begin_step(self, i: int) -> None:
        done = self.start - i  # steps already taken
        self.features = done < self.n_feat
        self.attention = done < self.n_attn

    def spread(self, x: Tensor) -> Tensor:
        """(B, ...) -> (B, ...) with the source row's values in the target rows."""
        if self.group:
            return broadcast_first_row(x, self.group)
        return copy_row_over(x, 0, self.n_source)

    def feature_hook(self, module, inputs, output: Tensor):
        return self.spread(output) if self.features else None

    def attention_hook(self, module, inputs, output: Tensor):
        return self.spread(output) if self.attention else None


class _EmptyPromptGuidance:
    """The ``empty_prompt`` batch of one step: the rule's rows are [source, t_1..t_K].

    One forward pass over ``[x_src with "", (x_src with the inversion's unconditional
    embedding), (x_src with the source prompt), targets with their unconditional embedding
    ×K (only where their guidance scale is not 1), targets with their prompts ×K]``; the
    bracketed source rows exist only where the source's own prediction is needed
    (``regenerate``, EDICT) and only where they differ from the empty-prompt row. Returns the
    rows' guided predictions, (1 + K, C, h, w) float32: the source row's is the inversion's
    guided prediction where it is needed, else the empty-prompt row's (``inversion``: the row
    is overwritten by the stored x_i before the next step).
    """

    def __init__(
        self,
        empty: Conditioning,
        source: Guidance | None,
        targets: Guidance,
        k: int,
        injection: _Injection,
    ) -> None:
        self.empty = empty  # one row: the null text
        self.source = source  # the inversion's guidance of the source row where needed, else None
        self.targets = targets  # the targets' guidance (cond K rows, uncond or None)
        self.k = k
        self.injection = injection
        # which source rows the pass needs: the empty-prompt row is reused where it is equal
        self.source_uncond_shared = False
        self.source_cond_shared = False
        if source is not None:
            self.source_cond_shared = empty.equal(source.cond)
            self.source_uncond_shared = source.uncond is not None and source.per_step is None and empty.equal(
                source.uncond
            )

    def _source_rows(self, i: int) -> list[Conditioning]:
        """The conditionings of the source rows after the empty-prompt row at step i."""
        rows: list[Conditioning] = []
        if self.source is None:
            return rows
        u = self.source.uncond_at(i, 1)
        if u is not None and not self.source_uncond_shared:
            rows.append(u)
        if not self.source_cond_shared:
            rows.append(self.source.cond)
        return rows

    def eps(self, backbone: Backbone, x: Tensor, t: int, i: int) -> Tensor:
        src, tgt = x[:1], x[1:]
        extra = self._source_rows(i)
        n_src = 1 + len(extra)
        u_t = self.targets.uncond_at(i, self.k)
        emb = [self.empty, *extra]
        xs = [src] * n_src
        if u_t is not None:
            emb.append(broadcast_rows(u_t, self.k))
            xs.append(tgt)
        emb.append(self.targets.cond)
        xs.append(tgt)
        self.injection.n_source = n_src
        # one pass, each row with its own conditioning (guidance combined below)
        out = backbone.predict_noise(torch.cat(xs), t, cat_rows(emb))
        e_empty = out[:1]
        if self.source is None:
            e_src = e_empty
        else:
            pos = 1
            if self.source.uncond is None:
                e_src_u = None
            elif self.source_uncond_shared:
                e_src_u = e_empty
            else:
                e_src_u, pos = out[pos : pos + 1], pos + 1
            e_src_c = e_empty if self.source_cond_shared else out[pos : pos + 1]
            e_src = e_src_c if e_src_u is None else guide(e_src_u, e_src_c, self.source.scale)
        e_t = out[n_src:]
        if u_t is not None:
            e_u, e_c = e_t[: self.k], e_t[self.k :]
            e_t = guide(e_u, e_c, self.targets.scale)
        return torch.cat([e_src, e_t])


def copy_row_over(x: Tensor, row: int, first: int) -> Tensor:
    """Rows ``first``.. of ``x`` replaced by row ``row``: (B, ...) -> (B, ...) (a new tensor)."""
    b = x.shape[0]
    return torch.cat([x[:first], x[row : row + 1].expand(b - first, *x.shape[1:])])


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
        if o.source_branch not in SOURCE_BRANCHES:
            raise ConfigError(
                f"plug_and_play.source_branch must be one of {', '.join(SOURCE_BRANCHES)}, got {o.source_branch!r}"
            )
        if not isinstance(o.negative_prompt, str):
            raise ConfigError(f"plug_and_play.negative_prompt must be a string, got {o.negative_prompt!r}")
        check_source_latents(o.source_latents, "plug_and_play")

    def prompt_options(self) -> list[PromptOption]:
        """The negative prompt (none when it is the null text "")."""
        o = self.options
        if not isinstance(o.negative_prompt, str) or not o.negative_prompt:
            return []
        default = " (the default, pnp-diffusers' own)" if o.negative_prompt == PNP_NEGATIVE_PROMPT else ""
        return [
            PromptOption(
                "plug_and_play.negative_prompt",
                [o.negative_prompt],
                f"this negative prompt{default} does not suit this backbone: set editor.negative_prompt='' "
                "(the null text) or a shorter negative prompt",
            )
        ]

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
        backbone: Backbone,
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
        src_cond = backbone.encode_prompt([source])
        tgt_cond = backbone.encode_prompt(targets)
        negative = None
        if o.negative_prompt:
            try:
                negative = backbone.encode_prompt([o.negative_prompt])
            except InputError as exc:  # e.g. longer than a small model's text encoder takes
                raise InputError(
                    f"plug_and_play.negative_prompt (default: pnp-diffusers' {PNP_NEGATIVE_PROMPT!r}) does not "
                    f"suit this backbone: {exc}. Set editor.negative_prompt='' (the null text) or a "
                    "shorter negative prompt"
                ) from None
        rule = inversion.regeneration(backbone, start, 1 + k, generator=generator, n_source=1)
        follow = follows_inversion(o.source_latents, inversion, rule.schedule)
        ctl = _Injection(
            start, injection_steps(o.feature_injection, start), injection_steps(o.attention_injection, start)
        )
        if o.source_branch == "guided":
            ctl.group = 1 + k
            guidance = self._guided(backbone, inversion, src_cond, tgt_cond, negative)
        else:
            # the targets: their negative prompt, else the inversion's unconditional embedding
            if negative is not None:
                tgt = Guidance(tgt_cond, negative if o.guidance_scale != 1 else None, o.guidance_scale)
            else:
                tgt = inversion_guidance(backbone, inversion, tgt_cond, o.guidance_scale)
            # the source's own guided prediction moves it where it is regenerated, and inside
            # steps that evaluate the network more than once (EDICT's half steps)
            own = not follow or rule.evaluations_per_step > 1
            src = inversion_guidance(backbone, inversion, src_cond, inversion.guidance_scale) if own else None
            guidance = _EmptyPromptGuidance(backbone.null_condition(), src, tgt, k, ctl)
        ctl.pairs = [(unet.get_submodule(name).conv2, ctl.feature_hook) for name in feature_layers]
        for name in attention_layers:
            for attn in attention_modules(unet, name, "attn1"):
                ctl.pairs += [(attn.to_q, ctl.attention_hook), (attn.to_k, ctl.attention_hook)]
        hooks: list[StepHook] = []
        if follow:
            hooks.append(FollowInversion(rule, slice(0, 1)))
        hooks.append(ctl)
        return denoise(backbone, rule, start, guidance, hooks, desc="plug_and_play")[1:]

    def _guided(
        self,
        backbone: Backbone,
        inversion: Inversion,
        src_cond: Conditioning,
        tgt_cond: Conditioning,
        negative: Conditioning | None,
    ) -> Guidance:
        """The ``guided`` batch: [uncond: source, targets; cond: source, targets], the source
        row with the inversion's guidance scale and unconditional embeddings."""
        o = self.options
        k = num_rows(tgt_cond)
        null = backbone.null_condition()
        uncond = null if negative is None else cat_rows([null, broadcast_rows(negative, k)])
        scale = torch.tensor([inversion.guidance_scale] + [o.guidance_scale] * k, dtype=torch.float32)
        # the inversion's own unconditional embedding: every row, or the source row where the
        # targets have a negative prompt
        return inversion_guidance(
            backbone, inversion, cat_rows([src_cond, tgt_cond]), scale, uncond,
            slice(0, 1) if negative is not None else None,
        )
