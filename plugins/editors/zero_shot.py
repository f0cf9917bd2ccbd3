"""Zero-Shot image-to-image translation (pix2pix-zero, Parmar et al., SIGGRAPH 2023), on any
inversion.

- Edit direction: Δc = mean text embedding (the full (L, D) CLIP output) of the target sentences
  minus that of the source sentences. The sentences come from files named in the options (one
  sentence per line, blank lines ignored); without a file a side uses its prompt, so without any
  file Δc_k = E(target_k) - E(source).
- Reference branch: the source prompt, the inversion's guidance scale, step rule and
  unconditional embeddings, from the inversion's x_{N-skip} (it reproduces the inverted
  sequence for edit-friendly/CycleDiffusion maps and EDICT, and is DDIM sampling from the
  inverted latent for DDIM). Both branches run through the one reverse loop; the gradient
  step is a step hook updating the latents before each step. Its cross-attention maps M_ref
  at step i are the reference for that step.
- Edit branch: conditioned on c + Δc. At each step, before denoising, one gradient step on the
  latent: x_i ← x_i - λ ∇_{x_i} Σ_layers mean_heads ‖M_edit(x_i) - M_ref‖² (λ =
  ``cross_attention_guidance``; the maps of every cross-attention layer, summed over query
  positions and tokens), then the usual step of eq. 3 with classifier-free guidance and the
  inversion's noise maps.

The paper uses 50 steps and λ = 0.1 with DDIM inversion, λ = 0.03 with edit-friendly inversion
(presets ``configs/editor/zero_shot.yaml`` and ``zero_shot_ef.yaml``).

Differences from the pix2pix-zero code, on purpose: the reference branch runs in lockstep with
the edit (it rides in the same batches, source row first) instead of a stored first pass, so
no maps are kept across steps and the reference costs no extra forward passes; and the
gradient step uses the conditional branch's maps only (the code guides a duplicated CFG batch
and keeps the unconditional copy of the latent).

Gradients: the guidance pass runs under ``torch.inference_mode(False)`` and
``torch.enable_grad()`` on clones of the inputs, so the editor works inside Lightning's predict
loop (inference mode); the network's weights stay frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from framework.errors import ConfigError, InputError
from framework.inversion import Inversion
from framework.registry import EDITORS
from framework.sampling import Editor, FollowInversion, StepHook, denoise, inversion_guidance
from plugins.editors.unet_hooks import (
    attention_modules,
    attention_probs,
    check_source_latents,
    follows_inversion,
    forward_hooks,
    unet_of,
)

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


@dataclass
class ZeroShotResult:
    """Latents and per-step diagnostics of one Zero-Shot edit (n = the edit's steps)."""

    latents: Tensor  # (K, C, h, w) float32
    attention_loss: Tensor | None  # (n, K): Σ_layers distance to the reference before each update
    update_norm: Tensor | None  # (n, K): ‖λ ∇‖ of each step's latent update


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


def mean_embedding(backbone: Any, sentences: Sequence[str]) -> Tensor:
    """Mean text embedding of ``sentences``: (1, L, D) float32."""
    total = None
    for k in range(0, len(sentences), SENTENCE_BATCH):
        emb = backbone.encode_prompt(list(sentences[k : k + SENTENCE_BATCH])).float().sum(0, keepdim=True)
        total = emb if total is None else total + emb
    assert total is not None
    return total / len(sentences)


class _CrossAttentionGuidance(StepHook):
    """The latent update before every step: x_edit <- x_edit - λ ∇ (distance of the edit rows'
    cross-attention maps to the reference row's), recorded per step (for a rule with two
    sequences, EDICT's, each is updated and the first one's figures are recorded)."""

    def __init__(self, backbone: Any, unet: torch.nn.Module, rule: Any, cond: Tensor, lam: float) -> None:
        self.backbone = backbone
        self.unet = unet
        self.schedule = rule.schedule
        self.cond = cond
        self.lam = lam
        self.losses: list[Tensor] = []
        self.updates: list[Tensor] = []
        self._recorded: int | None = None

    def latents(self, i: int, x: Tensor) -> Tensor:
        t = int(self.schedule.timesteps[i - 1])
        grad, loss = ZeroShot._attention_gradient(self.backbone, self.unet, x, t, self.cond, self.lam > 0)
        step = self.lam * grad
        if self._recorded != i:
            self._recorded = i
            self.losses.append(loss)
            self.updates.append(step.flatten(1).norm(dim=1))
        return torch.cat([x[:1], x[1:] - step])


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

    def _check_options(self, k: int) -> None:
        o = self.options
        if o.cross_attention_guidance < 0:
            raise ConfigError(f"zero_shot.cross_attention_guidance must be >= 0, got {o.cross_attention_guidance}")
        if o.targets_per_batch < 0:
            raise ConfigError(f"zero_shot.targets_per_batch must be >= 0 (0: all targets), got {o.targets_per_batch}")
        check_source_latents(o.source_latents, "zero_shot")
        ts = o.target_sentences
        if isinstance(ts, (list, tuple)) and len(ts) not in (1, k):
            raise InputError(
                f"zero_shot.target_sentences lists {len(ts)} files for {k} target prompts; give one "
                "file for all targets or one per target"
            )

    def directions(self, backbone: Any, source_prompt: str, targets: Sequence[str]) -> Tensor:
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
        backbone,  # noqa: ANN001
        inversion: Inversion,
        source_prompt: str,
        target_prompts: Sequence[str],
        *,
        skip: int = 36,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Return (K, C, h, w) float32 latents, one per target prompt."""
        return self.run(
            backbone, inversion, source_prompt, target_prompts, skip=skip, generator=generator
        ).latents

    def run(
        self,
        backbone,  # noqa: ANN001
        inversion: Inversion,
        source_prompt: str,
        target_prompts: Sequence[str],
        *,
        skip: int = 36,
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
        loss = None if parts[0][1] is None else torch.cat([p[1] for p in parts], dim=1)
        upd = None if parts[0][2] is None else torch.cat([p[2] for p in parts], dim=1)
        return ZeroShotResult(latents, loss, upd)

    def _edit_batch(
        self,
        backbone,  # noqa: ANN001
        unet: torch.nn.Module,
        inversion: Inversion,
        source: str,
        direction: Tensor,
        start: int,
        generator: torch.Generator | None,
        measure: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Reference row + K edit rows from x_start to x_0 -> (latents (K, ...), loss, update)."""
        o = self.options
        lam = float(o.cross_attention_guidance)
        k = direction.shape[0]
        device = backbone.device
        src = backbone.encode_prompt([source]).float()
        cond = torch.cat([src, src + direction.to(device)])  # (1 + K, L, D)
        scale = torch.tensor([inversion.guidance_scale] + [o.guidance_scale] * k, dtype=torch.float32)
        guidance = inversion_guidance(backbone, inversion, cond, scale)
        rule = inversion.regeneration(backbone, start, 1 + k, generator=generator, n_source=1)
        hooks: list[StepHook] = []
        if follows_inversion(o.source_latents, inversion, rule.schedule):
            hooks.append(FollowInversion(rule, slice(0, 1)))
        guide = _CrossAttentionGuidance(backbone, unet, rule, cond, lam) if lam > 0 or measure else None
        if guide is not None:
            hooks.append(guide)
        x = denoise(backbone, rule, start, guidance, hooks, desc="zero_shot")
        if guide is None:
            return x[1:], None, None
        return x[1:], torch.stack(guide.losses), torch.stack(guide.updates)

    @staticmethod
    def _attention_gradient(
        backbone,  # noqa: ANN001
        unet: torch.nn.Module,
        x: Tensor,
        t: int,
        cond: Tensor,
        need_grad: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """∇ of the cross-attention distance of the K edit rows (x[1:]) to the reference row
        (x[0]) in one conditional forward pass: returns (grad (K, C, h, w), loss (K,)); the
        gradient is zeros when ``need_grad`` is False (distance only)."""
        state: dict[str, Any] = {"q": None, "loss": None}

        def query_hook(module, inputs, output):  # noqa: ANN001, ANN202
            state["q"] = output

        def key_hook_for(attn: torch.nn.Module):  # noqa: ANN202
            def key_hook(module, inputs, output):  # noqa: ANN001, ANN202
                if state["q"] is None:
                    raise RuntimeError("zero_shot: to_k ran before to_q; unsupported attention processor")
                probs = attention_probs(attn, state["q"], output)  # (1+K, heads, n_q, L)
                ref = probs[:1].detach()
                d = (probs[1:] - ref).pow(2).sum(dim=(-1, -2)).mean(dim=1)  # (K,)
                state["loss"] = d if state["loss"] is None else state["loss"] + d
                state["q"] = None

            return key_hook

        pairs = []
        for attn in attention_modules(unet, "", "attn2"):
            pairs += [(attn.to_q, query_hook), (attn.to_k, key_hook_for(attn))]
        with torch.enable_grad(), forward_hooks(pairs):
            x_edit = x[1:].detach().clone().requires_grad_(True)
            batch = torch.cat([x[:1].detach().clone(), x_edit])
            backbone.predict_noise(batch, t, cond.detach().clone())
            loss = state["loss"]
            if loss is None:
                raise InputError("zero_shot found no cross-attention layers (attn2) in the UNet")
            if not need_grad:
                return torch.zeros_like(x_edit).detach(), loss.detach()
            (grad,) = torch.autograd.grad(loss.sum(), x_edit)
        return grad.detach(), loss.detach()
