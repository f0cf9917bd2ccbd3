"""Zero-Shot image-to-image translation (pix2pix-zero, Parmar et al., SIGGRAPH 2023), on any
inversion.

- Edit direction: Δc = mean text embedding (the full (L, D) CLIP output) of the target sentences
  minus that of the source sentences. The sentences come from files named in the options (one
  sentence per line, blank lines ignored); without a file a side uses its prompt, so without any
  file Δc_k = E(target_k) - E(source).
- Reference branch: the source prompt, the inversion's guidance scale, step rule and
  unconditional embeddings (null-text, negative-prompt inversion), from the inversion's
  x_{N-skip} (it reproduces the inverted sequence for edit-friendly/CycleDiffusion maps and
  EDICT, and is DDIM sampling from the inverted latent for DDIM). Both branches run through
  the one reverse loop, the reference row first in every batch; its cross-attention maps at
  step i are the reference M_ref for that step.
- Edit branch: conditioned on c + Δc, with the negative prompt ``negative_prompt`` (default
  ``source``: the source prompt, as pix2pix-zero's ``edit_real.py`` calls its pipeline).
  Before every step, pix2pix-zero's gradient step (``attention_guidance: both``): the
  unconditional and the conditional guidance copies of x_i each move by -λ ∇ of
  (1 / (2·heads)) Σ_copies Σ_layers Σ_heads ‖M_copy(x_copy) - M_ref,copy‖² (maps summed over
  query positions and tokens; M_ref,copy is the reference row's maps under the same copy's
  prompt: with the source prompt as the negative, both are the source prompt's maps, as in
  the code's first loop); the prediction is ε_u(x_u') + w (ε_c(x_c') - ε_u(x_u')), and the step
  of eq. 3 (with the inversion's noise maps) is taken from the updated *unconditional* copy
  x_u'. At the first step x_u sits on the reference, so only x_c moves. λ =
  ``cross_attention_guidance`` means what it means there: 0.1 with DDIM inversion, the paper's
  0.03 with edit-friendly inversion (presets ``configs/editor/zero_shot.yaml`` and
  ``zero_shot_ef.yaml``; the paper runs 50 steps, no skip, on ``inverter=ddim_pix2pix_zero``
  for the DDIM baseline).

Options that give this project's earlier variant: ``negative_prompt: empty`` (the null text,
or the inversion's per-step unconditional embedding where it has one, as every other
editor); ``attention_guidance: conditional`` (the conditional copy's maps only, mean over
heads, so the same λ is about twice as strong; both branches then see the one updated
latent). With a guidance scale of 1 there is no unconditional copy: the loss is the
conditional copy's mean over heads and its update is kept (as in the code without CFG).

With a step rule of two sequences (EDICT) each sequence gets its own update, and every network
evaluation of the step puts its conditional branch at the evaluated latent plus the mean over
the sequences of x_c' - x_u' (the copies' difference is carried over to EDICT's intermediate
latents).

Differences from the pix2pix-zero code, on purpose: the reference branch runs in lockstep with
the edit (it rides in the same batches) instead of a stored first pass, so no maps are kept
across steps and the reference costs no extra forward passes (two network evaluations per
step for all rows: the guidance pass with both copies, then the prediction); the reference row
keeps the inversion's own guidance (the code's first loop uses the caption for both branches,
which equals guidance 1, its inversion's scale).

Gradients: the guidance pass runs under ``torch.inference_mode(False)`` and
``torch.enable_grad()`` on clones of the inputs, so the editor works inside Lightning's predict
loop (inference mode); the network's weights stay frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from framework.errors import ConfigError, InputError
from framework.inversion import Inversion
from framework.prompts import PromptOption
from framework.registry import EDITORS
from framework.sampling import Editor, FollowInversion, Guidance, StepHook, denoise, inversion_guidance
from framework.schema import DEFAULT_SKIP
from plugins.editors.unet_hooks import (
    attention_modules,
    attention_probs,
    check_source_latents,
    follows_inversion,
    forward_hooks,
    unet_of,
)

if TYPE_CHECKING:
    from framework.backbone import Backbone

#: sentences encoded per text-encoder batch when computing a direction
SENTENCE_BATCH = 32


@dataclass
class ZeroShotOptions:
    """Options of the ``zero_shot`` editor (defaults: pix2pix-zero's, with DDIM inversion)."""

    guidance_scale: float = 5.0  # classifier-free guidance of the edit branch
    cross_attention_guidance: float = 0.1  # λ; the paper uses 0.03 with edit-friendly inversion
    source_sentences: Any = None  # a text file of source sentences (None: the source prompt)
    # a text file, or a list with one file per target prompt (None: each target prompt)
    target_sentences: Any = None
    source_latents: str = "regenerate"  # regenerate | inversion: how the reference row moves
    targets_per_batch: int = 0  # targets per batch with the reference row (0: all at once)
    # the edit's negative prompt: source (pix2pix-zero: the source prompt) | empty (the null
    # text, or the inversion's per-step unconditional embedding where it has one)
    negative_prompt: str = "source"
    # both (pix2pix-zero: the loss over both guidance copies, the step taken from the updated
    # unconditional copy) | conditional (the conditional copy's maps only, mean over heads,
    # one updated latent for both branches)
    attention_guidance: str = "both"


NEGATIVE_PROMPTS = ("source", "empty")
ATTENTION_GUIDANCE = ("both", "conditional")


@dataclass
class ZeroShotResult:
    """Latents and per-step diagnostics of one Zero-Shot edit (n = the edit's steps)."""

    latents: Tensor  # (K, C, h, w) float32
    attention_loss: Tensor | None  # (n, K): Σ_layers distance to the reference before each update
    update_norm: Tensor | None  # (n, K): ‖x' - x‖ of the latent each step is taken from
    cond_update_norm: Tensor | None = None  # (n, K): ‖x_c' - x‖ of the conditional copy


def read_sentences(path: Any, what: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file."""
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"{what} must be a path to a text file (one sentence per line), got {path!r}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{what}: sentence file {str(p)!r} does not exist (give a text file, one sentence per line)")
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what}: cannot read {str(p)!r} as UTF-8 text: {exc}") from None
    sentences = [s for s in lines if s]
    if not sentences:
        raise InputError(f"{what}: sentence file {str(p)!r} has no sentences")
    return sentences


def mean_embedding(backbone: Backbone, sentences: Sequence[str]) -> Tensor:
    """Mean text embedding of ``sentences``: (1, L, D) float32."""
    total = None
    for k in range(0, len(sentences), SENTENCE_BATCH):
        emb = backbone.encode_prompt(list(sentences[k : k + SENTENCE_BATCH])).float().sum(0, keepdim=True)
        total = emb if total is None else total + emb
    assert total is not None
    return total / len(sentences)


class _ZeroShotStep(StepHook):
    """The Zero-Shot rows of the loop: the gradient step before every step (a ``latents``
    hook) and the guided prediction that uses its per-copy latents (``eps``, in place of
    :class:`Guidance`).

    Rows: 0 is the reference, 1..K the edits. With ``two_copies`` each edit row has an
    unconditional copy x_u and a conditional copy x_c, both x_i before the update; the loss
    of edit k is (1 / (2·heads)) Σ_copies Σ_layers Σ_heads ‖M_copy - M_ref,copy‖² (the maps
    summed over queries and tokens; M_ref,copy the reference row's maps under the same
    copy's prompt), each copy moves by -λ ∇ of it, the step is taken from x_u', and the
    prediction is ε_u(x_u') + w (ε_c(x_c') - ε_u(x_u')): pix2pix-zero's step. With one copy
    (the ``conditional`` variant, or an edit guidance scale of 1) the loss is the
    conditional maps' mean over heads and both branches see the one updated latent.

    With several sequences (EDICT) each sequence gets its own update, and every network
    evaluation of the step puts its conditional branch at the evaluated latent plus the
    mean over the sequences of x_c' - x_u'. Recorded per step: the loss before the update
    (K,) and the norms of the kept (x_u') and conditional (x_c') updates (first sequence).
    """

    def __init__(
        self,
        backbone: Backbone,
        unet: torch.nn.Module,
        rule: Any,
        guidance: Guidance,
        lam: float,
        two_copies: bool,
        active: bool,
    ) -> None:
        self.backbone = backbone
        self.unet = unet
        self.schedule = rule.schedule
        self.guidance = guidance
        self.lam = lam
        self.two_copies = two_copies
        self.active = active
        self.losses: list[Tensor] = []
        self.updates: list[Tensor] = []
        self.cond_updates: list[Tensor] = []
        self._recorded: int | None = None
        self._shifts: list[Tensor] = []

    def begin_step(self, i: int) -> None:
        self._shifts = []

    def negative(self, i: int, batch: int) -> Tensor:
        """The edit rows' unconditional embedding at step i, (1, L, D)."""
        u = self.guidance.uncond_at(i, batch)
        assert u is not None
        return u[1:2] if u.shape[0] > 1 else u

    def latents(self, i: int, x: Tensor) -> Tensor:
        if not self.active:
            return x
        t = self.schedule.timestep(i)
        neg = self.negative(i, x.shape[0]) if self.two_copies else None
        grads, loss = ZeroShot.attention_gradient(
            self.backbone, self.unet, x.float(), t, self.guidance.cond, neg, need_grad=self.lam > 0
        )
        # the update in the sequence's own dtype (EDICT keeps float64)
        x_c = x[1:] - self.lam * grads[-1].to(x.dtype)
        x_u = x[1:] - self.lam * grads[0].to(x.dtype) if self.two_copies else x_c
        if self._recorded != i:
            self._recorded = i
            self.losses.append(loss)
            self.updates.append((x_u - x[1:]).flatten(1).norm(dim=1))
            self.cond_updates.append((x_c - x[1:]).flatten(1).norm(dim=1))
        if self.two_copies:
            self._shifts.append(torch.cat([torch.zeros_like(x[:1]), x_c - x_u]))
        return torch.cat([x[:1], x_u])

    def eps(self, backbone: Backbone, x: Tensor, t: int, i: int) -> Tensor:
        """ε̂ of every row at step i, (1+K, C, h, w) float32, in one batched forward pass."""
        g = self.guidance
        b = x.shape[0]
        uncond = g.uncond_at(i, b)
        if not self._shifts:
            return backbone.predict_noise(x, t, g.cond, uncond, g.scale)
        shift = torch.stack(self._shifts).mean(0).to(x.device, x.dtype)
        x = x.float()
        x_c = x + shift.float()
        if uncond is None:
            return backbone.predict_noise(x_c, t, g.cond)
        return backbone.predict_noise(x, t, g.cond, uncond, g.scale, x_cond=x_c)


@EDITORS.register("zero_shot")
class ZeroShot(Editor):
    """pix2pix-zero: edit direction in text-embedding space plus cross-attention guidance."""

    Options = ZeroShotOptions

    def __init__(self, options: ZeroShotOptions | None = None) -> None:
        super().__init__(options)
        # fail at construction (before any inversion) on a missing sentence file
        o = self.options
        if o.source_sentences is not None:
            read_sentences(o.source_sentences, "zero_shot.source_sentences")
        ts = o.target_sentences
        for f in (ts if isinstance(ts, (list, tuple)) else [] if ts is None else [ts]):
            read_sentences(f, "zero_shot.target_sentences")

    def prompt_options(self) -> list[PromptOption]:
        """The sentences of the sentence files (each is encoded like a prompt)."""
        o = self.options
        out = []
        if o.source_sentences is not None:
            out.append(
                PromptOption(
                    f"zero_shot.source_sentences ({o.source_sentences})",
                    read_sentences(o.source_sentences, "zero_shot.source_sentences"),
                    "shorten that sentence",
                )
            )
        ts = o.target_sentences
        for f in ts if isinstance(ts, (list, tuple)) else [] if ts is None else [ts]:
            out.append(
                PromptOption(
                    f"zero_shot.target_sentences ({f})",
                    read_sentences(f, "zero_shot.target_sentences"),
                    "shorten that sentence",
                )
            )
        return out

    def _check_options(self, k: int) -> None:
        o = self.options
        if o.cross_attention_guidance < 0:
            raise ConfigError(f"zero_shot.cross_attention_guidance must be >= 0, got {o.cross_attention_guidance}")
        if o.targets_per_batch < 0:
            raise ConfigError(f"zero_shot.targets_per_batch must be >= 0 (0: all targets), got {o.targets_per_batch}")
        check_source_latents(o.source_latents, "zero_shot")
        if o.negative_prompt not in NEGATIVE_PROMPTS:
            raise ConfigError(
                f"zero_shot.negative_prompt must be one of {', '.join(NEGATIVE_PROMPTS)}, got {o.negative_prompt!r}"
            )
        if o.attention_guidance not in ATTENTION_GUIDANCE:
            raise ConfigError(
                f"zero_shot.attention_guidance must be one of {', '.join(ATTENTION_GUIDANCE)}, "
                f"got {o.attention_guidance!r}"
            )
        ts = o.target_sentences
        if isinstance(ts, (list, tuple)) and len(ts) not in (1, k):
            raise InputError(
                f"zero_shot.target_sentences lists {len(ts)} files for {k} target prompts; give one "
                "file for all targets or one per target"
            )

    def directions(self, backbone: Backbone, source_prompt: str, targets: Sequence[str]) -> Tensor:
        """Δc_k = mean E(target sentences of k) - mean E(source sentences): (K, L, D)."""
        o = self.options
        src = (
            read_sentences(o.source_sentences, "zero_shot.source_sentences")
            if o.source_sentences is not None
            else [source_prompt]
        )
        src_mean = mean_embedding(backbone, src)
        ts = o.target_sentences
        if ts is None:
            return backbone.encode_prompt(list(targets)).float() - src_mean
        files = list(ts) if isinstance(ts, (list, tuple)) else [ts]
        if len(files) == 1:
            files = files * len(targets)
        cache: dict[str, Tensor] = {}
        rows = []
        for f in files:
            key = str(f)
            if key not in cache:
                cache[key] = mean_embedding(backbone, read_sentences(f, "zero_shot.target_sentences"))
            rows.append(cache[key] - src_mean)
        return torch.cat(rows)

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
        return self.run(
            backbone, inversion, source_prompt, target_prompts, skip=skip, generator=generator
        ).latents

    def run(
        self,
        backbone: Backbone,
        inversion: Inversion,
        source_prompt: str,
        target_prompts: Sequence[str],
        *,
        skip: int = DEFAULT_SKIP,
        generator: torch.Generator | None = None,
        direction: Tensor | None = None,
        measure: bool = False,
    ) -> ZeroShotResult:
        """The edit with diagnostics. ``direction`` (K or 1, L, D) replaces the sentence
        direction; ``measure`` records the attention distance also when λ = 0 (one extra
        forward pass per step)."""
        targets = self.check_inputs(backbone, inversion, target_prompts)
        self._check_options(len(targets))
        unet = unet_of(backbone, "zero_shot")
        start = inversion.check_skip(skip)
        source = source_prompt if isinstance(source_prompt, str) else inversion.source_prompt[0]
        with torch.inference_mode(False), torch.no_grad():
            if direction is None:
                direction = self.directions(backbone, source, targets)
            else:
                direction = direction.to(backbone.device, torch.float32).clone()
                if direction.shape[0] == 1:
                    direction = direction.expand(len(targets), *direction.shape[1:])
            per = self.options.targets_per_batch or len(targets)
            parts = [
                self._edit_batch(
                    backbone, unet, inversion, source, direction[k : k + per], start, generator, measure
                )
                for k in range(0, len(targets), per)
            ]
        latents = torch.cat([p[0] for p in parts])
        diag = [None if parts[0][j] is None else torch.cat([p[j] for p in parts], dim=1) for j in (1, 2, 3)]
        return ZeroShotResult(latents, *diag)

    def _edit_batch(
        self,
        backbone: Backbone,
        unet: torch.nn.Module,
        inversion: Inversion,
        source: str,
        direction: Tensor,
        start: int,
        generator: torch.Generator | None,
        measure: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """Reference row + K edit rows from x_start to x_0 -> (latents (K, ...), loss, update,
        conditional update)."""
        o = self.options
        lam = float(o.cross_attention_guidance)
        k = direction.shape[0]
        device = backbone.device
        src = backbone.encode_prompt([source]).float()
        cond = torch.cat([src, src + direction.to(device)])  # (1 + K, L, D)
        scale = torch.tensor([inversion.guidance_scale] + [o.guidance_scale] * k, dtype=torch.float32)
        if o.negative_prompt == "source":
            # the reference row keeps the inversion's unconditional embedding (per step if any)
            base = torch.cat([backbone.null_condition().float(), src.expand(k, *src.shape[1:])])
            guidance = inversion_guidance(backbone, inversion, cond, scale, base, slice(0, 1))
        else:
            guidance = inversion_guidance(backbone, inversion, cond, scale)
        rule = inversion.regeneration(backbone, start, 1 + k, generator=generator, n_source=1)
        hooks: list[StepHook] = []
        if follows_inversion(o.source_latents, inversion, rule.schedule):
            hooks.append(FollowInversion(rule, slice(0, 1)))
        two = o.attention_guidance == "both" and float(o.guidance_scale) != 1 and guidance.uncond is not None
        step = _ZeroShotStep(backbone, unet, rule, guidance, lam, two, active=lam > 0 or measure)
        hooks.append(step)
        x = denoise(backbone, rule, start, step, hooks, desc="zero_shot")
        if not step.active:
            return x[1:], None, None, None
        return x[1:], torch.stack(step.losses), torch.stack(step.updates), torch.stack(step.cond_updates)

    @staticmethod
    def attention_gradient(
        backbone: Backbone,
        unet: torch.nn.Module,
        x: Tensor,
        t: int,
        cond: Tensor,
        negative: Tensor | None = None,
        need_grad: bool = True,
    ) -> tuple[list[Tensor], Tensor]:
        """∇ of the cross-attention distance of the K edit rows (x[1:]) to the reference row
        (x[0]), in one forward pass, per guidance copy.

        ``cond`` (1+K, L, D) conditions the conditional copy. With ``negative`` (1, L, D) the
        batch also holds the unconditional copy, every row conditioned on ``negative``, and the
        loss of edit k is (1 / (2·heads)) Σ_copies Σ_layers Σ_heads Σ_{queries, tokens}
        (M - M_ref)², M_ref the reference row's maps in the same copy; without it, the
        conditional copy's mean over heads. Returns (grads: one (K, C, h, w) per copy,
        unconditional first; loss (K,)); the grads are zeros when ``need_grad`` is False.
        """
        state: dict[str, Any] = {"q": None, "d": []}
        rows = x.shape[0]

        def query_hook(module, inputs, output):
            state["q"] = output

        def key_hook_for(attn: torch.nn.Module):
            def key_hook(module, inputs, output):
                if state["q"] is None:
                    raise RuntimeError("zero_shot: to_k ran before to_q; unsupported attention processor")
                probs = attention_probs(attn, state["q"], output)  # (copies·(1+K), heads, n_q, L)
                per_copy = probs.reshape(-1, rows, *probs.shape[1:])  # (copies, 1+K, heads, n_q, L)
                ref = per_copy[:, :1].detach()
                d = (per_copy[:, 1:] - ref).pow(2).sum(dim=(-1, -2))  # (copies, K, heads)
                state["d"].append(d.permute(1, 0, 2).flatten(1))  # (K, copies·heads)
                state["q"] = None

            return key_hook

        pairs = []
        for attn in attention_modules(unet, "", "attn2"):
            pairs += [(attn.to_q, query_hook), (attn.to_k, key_hook_for(attn))]
        with torch.inference_mode(False), torch.enable_grad(), forward_hooks(pairs):
            x_ref = x[:1].detach().clone().float()
            copies = [x[1:].detach().clone().float().requires_grad_(True) for _ in range(1 if negative is None else 2)]
            c = cond.detach().clone()
            if negative is None:
                batch, emb = torch.cat([x_ref, copies[0]]), c
            else:
                neg = negative.detach().clone().expand(rows, *c.shape[1:])
                batch = torch.cat([x_ref, copies[0], x_ref, copies[1]])
                emb = torch.cat([neg, c])
            backbone.predict_noise(batch, t, emb)
            if not state["d"]:
                raise InputError("zero_shot found no cross-attention layers (attn2) in the UNet")
            loss = sum(d.mean(dim=1) for d in state["d"])  # (K,): Σ_layers mean over copies·heads
            if not need_grad:
                return [torch.zeros_like(v).detach() for v in copies], loss.detach()
            grads = torch.autograd.grad(loss.sum(), copies)
        return [g.detach() for g in grads], loss.detach()
