"""Prompt-to-Prompt (Hertz et al., 2022) on diffusers' attention-processor API.

The source prompt and every target prompt run as one batch of B = 1 + K rows from the
inversion's x_{N-skip}, through the one reverse loop with the inversion's step rule (eq. 3 with
its noise maps z_i, the same maps for every row, and its η; EDICT's coupled update) and its
unconditional embeddings (every row, as the null-text code). The source row (row 0) keeps the
inversion's own guidance scale, so that with edit-friendly inversion it reproduces x0 exactly;
the target rows use ``guidance_scale``. The attention control is a step hook.
During the denoising steps the cross-attention maps of the target rows are taken from the
source row's maps:

* replace (same number of words, as the reference scripts choose): the target's map of each
  token is the source's map of the token in its place; a replaced word of another token count
  shares its source word's maps (P2P's replacement mapper, :func:`replacement_matrix`);
* refine (different numbers of words): a global alignment of the two token sequences maps
  each target token to its source token; tokens that are new in the target keep their own map;
* reweight: the (replaced or refined) maps of chosen words are multiplied by chosen weights;
* local blend: a mask from the cross-attention of chosen words (summed over the steps run so
  far, averaged over the layers at one resolution and their heads, dilated by a 3×3 max-pool,
  normalized by its maximum and thresholded), united over the source row and each target row,
  restricts the change to that region after every step: x_tgt ← x_src + m·(x_tgt - x_src).

Self-attention maps of the target rows are replaced by the source row's maps during the
self-replacement steps, only in the layers whose query count is at most
(``max_self_resolution``·h)·(``max_self_resolution``·w) for h×w latents: the default 0.25 gives
the reference code's "16×16 and smaller" (``att_replace.shape[2] <= 16 ** 2``, in
google/prompt-to-prompt and the edit-friendly authors' copy) for Stable Diffusion's 64×64
latents; 0.5 adds the 32×32 layers.

The resolutions are fractions of the latent's side, so they carry over to other UNets: on SDXL
at 1024² (128² latents, attention at 64² and 32²) the default 0.25 replaces self-attention at
32² (``down_blocks.2``, the middle block and ``up_blocks.0``: the coarsest attention level and
the middle block, as 16² and 8² are in SD) and takes the local blend's maps at 32². Every cross-attention
layer is controlled, whatever its depth (SDXL's blocks have 2 or 10 transformer layers). Token
positions are the tokenizer's (``Backbone.token_positions``); SDXL's two tokenizers give the
same positions (its backbone checks it), and its cross-attention reads both encoders' features
at each position.

Steps follow the reference code: they are counted from the first step the edit runs (k = 0 at
step N - skip), and a window [a, b] of ``cross_replace_steps`` / ``self_replace_steps`` means
int(a·N) <= k < int(b·N) with N the inversion's number of steps; a single number f is [0, f].
The unconditional half of the classifier-free-guidance batch is never controlled.

Processors are installed only for the call (:func:`attention_control`, a context manager that
puts the very same processor objects back, also when the edit raises), and only on the layers
that are controlled; the others keep their processors (PyTorch scaled-dot-product attention).
A controlled layer runs its original processor at the steps where it is not controlled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from framework.backbone import word_positions  # noqa: F401 (importable from here too)
from framework.errors import ConfigError, InputError
from framework.inversion import Inversion
from framework.registry import EDITORS
from framework.sampling import Editor, StepHook, denoise, inversion_guidance
from framework.schema import DEFAULT_SKIP

if TYPE_CHECKING:
    from framework.backbone import Backbone

#: (cross_replace_steps, self_replace_steps) defaults by kind of inversion (reference code)
DEFAULT_STEPS = {"noise_maps": (0.6, 0.2), "ddim": (0.8, 0.4)}
MODES = ("auto", "replace", "refine")
#: P2P's local blend dilates the word map with a (2k+1)×(2k+1) max-pool, k = 1
BLEND_POOL = 1


@dataclass
class PromptToPromptOptions:
    """Options of the ``prompt_to_prompt`` editor.

    Defaults are the reference code's for P2P on edit-friendly inversion (run it with skip 12).
    ``cross_replace_steps`` / ``self_replace_steps`` left empty (null) are picked from the
    inversion: 0.6 / 0.2 for inversions with noise maps (ddpm_edit_friendly, cycle_diffusion),
    0.8 / 0.4 for deterministic ones (``Inversion.deterministic``: ddim, null_text,
    negative_prompt, edict).
    """

    guidance_scale: float = 9.0  # classifier-free guidance of the target rows
    mode: str = "auto"  # auto (same word count -> replace, else refine) | replace | refine
    cross_replace_steps: Any = None  # fraction f (= [0, f]) or [start, end] of the steps; null: by inversion
    self_replace_steps: Any = None  # fraction or [start, end]; null: by inversion
    max_self_resolution: float = 0.25  # self-attention replaced where side <= this × latent side
    equalizer_words: list[str] = field(default_factory=list)  # reweight: words of the targets
    equalizer_weights: list[float] = field(default_factory=list)  # one per word, or one for all
    blend_words: list[str] = field(default_factory=list)  # local blend: words of source/targets
    threshold: float = 0.3  # local blend: mask = normalized map > threshold
    blend_resolution: float = 0.25  # local blend maps: side ≈ this × latent side (P2P: 16 of 64)


# --------------------------------------------------------------------------- token alignment
def align_tokens(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """Global alignment of two token sequences, as P2P's aligner (``seq_aligner.global_align``).

    Needleman-Wunsch with match +1, mismatch -1, gap 0. Where several moves reach a cell's best
    score the reference keeps the first of left (skip a target token), up (skip a source token),
    diagonal, and its traceback follows those choices; so does this one. The preference matters
    with repeated words: aligning ``a cat`` to ``a cat a cat`` maps the *first* ``a cat`` of the
    target to the source words and leaves the second one new.

    Returns, for each target position j, the aligned source position, or -1 where the target token
    has no source token (an inserted word). A diagonal step the traceback takes is an alignment,
    as in the reference (with these scores it is only taken for equal tokens).
    """
    n, m = len(source), len(target)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]  # 1 left, 2 up, 3 diagonal
    for j in range(1, m + 1):
        move[0][j] = 1
    for i in range(1, n + 1):
        move[i][0] = 2
        for j in range(1, m + 1):
            left = score[i][j - 1]
            up = score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if source[i - 1] == target[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            move[i][j] = 1 if best == left else 2 if best == up else 3
    out = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        if move[i][j] == 3:
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif move[i][j] == 1:
            j -= 1
        else:
            i -= 1
    return out


def word_spans(tokenizer: Any, prompt: str) -> list[list[int]]:
    """Token positions (start token = 0) of each word of ``prompt.split(" ")``, in order."""
    spans, pos = [], 1
    for word in prompt.split(" "):
        count = len(tokenizer(word, add_special_tokens=False).input_ids)
        spans.append(list(range(pos, pos + count)))
        pos += count
    return spans


def replacement_matrix(tokenizer: Any, source: str, target: str, length: int) -> Tensor:
    """P2P's word replacement map (``seq_aligner.get_replacement_mapper``): (L, L) float M with
    target map n = Σ_w source map w · M[w, n].

    Both prompts must have the same number of words (split on single spaces). A replaced word
    whose token counts agree maps token to token; otherwise every target token of it gets each
    source token's map with weight 1 / (its number of target tokens). Other tokens map one to
    one, in order, until the last replaced word; after it the reference maps every position to
    itself (M[j, j] = 1), which shifts the remaining words when a replaced word changed the token
    count. That is kept as the reference computes it; ``mode: refine`` aligns them instead.
    """
    src_words, tgt_words = source.split(" "), target.split(" ")
    if len(src_words) != len(tgt_words):
        raise InputError(
            f"mode 'replace' needs source and target prompts with the same number of words, got "
            f"{len(src_words)} and {len(tgt_words)}; use mode 'refine' or 'auto'"
        )
    changed = [k for k, (a, b) in enumerate(zip(src_words, tgt_words)) if a != b]
    src_spans, tgt_spans = word_spans(tokenizer, source), word_spans(tokenizer, target)
    pending = [(src_spans[k], tgt_spans[k]) for k in changed]
    mapper = torch.zeros(length, length)
    i = j = 0
    while i < length and j < length:
        if pending and pending[0][0] and pending[0][0][0] == i:
            s_pos, t_pos = pending.pop(0)
            s_pos = [p for p in s_pos if p < length]
            t_pos = [p for p in t_pos if p < length]
            if len(s_pos) == len(t_pos):
                mapper[s_pos, t_pos] = 1.0
            else:
                for t in t_pos:
                    mapper[s_pos, t] = 1.0 / len(t_pos)
            i += len(s_pos)
            j += len(t_pos)
        elif pending:
            mapper[i, j] = 1.0
            i, j = i + 1, j + 1
        else:
            mapper[j, j] = 1.0
            i, j = i + 1, j + 1
    return mapper


def token_mapping(
    tokenizer: Any, source: str, target: str, mode: str, length: int
) -> tuple[Tensor, Tensor, str]:
    """(M (L, L), alpha (L,), mode used): the controlled map of target token n is
    alpha[n]·Σ_w source_map[w]·M[w, n] + (1 - alpha[n])·own_map[n].

    ``auto`` chooses as the reference's scripts do: replace when the prompts have the same number
    of words, refine otherwise. Replace: :func:`replacement_matrix`, alpha 1. Refine: the
    alignment of :func:`align_tokens` over the full token sequences (start and end tokens
    included), alpha 0 at inserted tokens; positions past the target's end map to themselves.
    """
    if mode == "auto":
        mode = "replace" if len(source.split(" ")) == len(target.split(" ")) else "refine"
    alpha = torch.ones(length)
    if mode == "replace":
        return replacement_matrix(tokenizer, source, target, length), alpha, mode
    ids = [list(tokenizer(p, truncation=True, max_length=length).input_ids) for p in (source, target)]
    index = torch.arange(length)
    for j, i in enumerate(align_tokens(ids[0], ids[1])[:length]):
        index[j] = max(i, 0)
        alpha[j] = 1.0 if i >= 0 else 0.0
    return F.one_hot(index, length).T.float(), alpha, mode


# --------------------------------------------------------------------------- step windows
def parse_window(value: Any, what: str) -> tuple[float, float]:
    """A fraction f -> (0, f); a pair [a, b] with 0 <= a <= b <= 1 -> (a, b)."""
    if isinstance(value, Mapping) or isinstance(value, str) or isinstance(value, bool):
        raise ConfigError(f"{what} must be a fraction in [0, 1] or a [start, end] pair, got {value!r}")
    if isinstance(value, (int, float)):
        pair: tuple[float, float] = (0.0, float(value))
    else:
        try:
            items = list(value)
        except TypeError:
            raise ConfigError(
                f"{what} must be a fraction in [0, 1] or a [start, end] pair, got {value!r}"
            ) from None
        if len(items) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            raise ConfigError(f"{what} must be a fraction in [0, 1] or a [start, end] pair, got {value!r}")
        pair = (float(items[0]), float(items[1]))
    if not 0.0 <= pair[0] <= pair[1] <= 1.0:
        raise ConfigError(f"{what} must satisfy 0 <= start <= end <= 1, got {list(pair)}")
    return pair


def step_range(window: tuple[float, float], num_steps: int) -> tuple[int, int]:
    """Edit-step indices k with lo <= k < hi (reference: int(a·N), int(b·N))."""
    return int(window[0] * num_steps), int(window[1] * num_steps)


# --------------------------------------------------------------------------- layers
@dataclass
class Layer:
    """One attention layer of the UNet as the controller sees it."""

    name: str  # key in unet.attn_processors
    is_cross: bool
    height: int  # query grid of the layer
    width: int
    controls_self: bool = False  # a self-attention layer whose maps are replaced
    records_blend: bool = False  # a cross-attention layer whose maps feed the local blend

    @property
    def positions(self) -> int:
        return self.height * self.width


def layer_grids(unet: Any, h: int, w: int) -> dict[str, tuple[int, int]]:
    """Query grid (rows, cols) of each UNet block for h×w latents, from the UNet's layout."""
    grids: dict[str, tuple[int, int]] = {}
    gh, gw = h, w
    for i, block in enumerate(unet.down_blocks):
        grids[f"down_blocks.{i}"] = (gh, gw)
        if getattr(block, "downsamplers", None):
            gh, gw = math.ceil(gh / 2), math.ceil(gw / 2)
    grids["mid_block"] = (gh, gw)
    n = len(unet.down_blocks)
    if len(unet.up_blocks) != n:
        raise InputError("prompt_to_prompt needs a UNet whose up path mirrors its down path")
    for j in range(n):  # up block j works at the resolution of down block n-1-j
        grids[f"up_blocks.{j}"] = grids[f"down_blocks.{n - 1 - j}"]
    return grids


def unet_layers(unet: Any, h: int, w: int) -> list[Layer]:
    """Every attention layer of ``unet`` with its kind and query grid for h×w latents."""
    grids = layer_grids(unet, h, w)
    layers = []
    for name in unet.attn_processors:
        module = unet.get_submodule(name.removesuffix(".processor"))
        block = "mid_block" if name.startswith("mid_block") else ".".join(name.split(".")[:2])
        if block not in grids:
            raise InputError(f"prompt_to_prompt does not know where attention layer {name} sits in the UNet")
        gh, gw = grids[block]
        layers.append(Layer(name, bool(getattr(module, "is_cross_attention", False)), gh, gw))
    return layers


@contextlib.contextmanager
def attention_control(unet: Any, processors: Mapping[str, Any]) -> Iterator[None]:
    """Install ``processors`` (name -> processor) for the block; put the old ones back after.

    Only the named layers change; afterwards ``unet.attn_processors`` holds the very same
    processor objects as before, also when the block raises.
    """
    before = unet.attn_processors
    unknown = [n for n in processors if n not in before]
    if unknown:
        raise ValueError(f"no attention layer named {unknown[0]!r}")
    modules = {n: unet.get_submodule(n.removesuffix(".processor")) for n in processors}
    try:
        for name, proc in processors.items():
            modules[name].set_processor(proc)
        yield
    finally:
        for name in processors:
            modules[name].set_processor(before[name])


# --------------------------------------------------------------------------- the controller
class AttentionController:
    """Holds what the controlled layers need; the editor sets the step explicitly.

    Row layout of a forward pass: B = 1 + K prompt rows (source first), or 2B rows
    ([unconditional rows; conditional rows]) with classifier-free guidance; only the
    conditional rows are controlled.
    """

    def __init__(
        self,
        num_prompts: int,
        token_map: Tensor,  # (K, L, L) float: target map n = Σ_w source map w · token_map[k, w, n]
        token_alpha: Tensor,  # (K, L) float
        cross_steps: tuple[int, int],
        self_steps: tuple[int, int],
        equalizer: Tensor | None = None,  # (K, L) float
        blend_weights: Tensor | None = None,  # (B, L) float: 1 at blend-word positions
    ) -> None:
        self.num_prompts = num_prompts
        self.token_map = token_map
        self.token_alpha = token_alpha
        self.cross_steps = cross_steps
        self.self_steps = self_steps
        self.equalizer = equalizer
        self.blend_weights = blend_weights
        self.step: int | None = None
        self.calls = 0  # controlled attention evaluations (for tests and logs)
        self.blend_total: Tensor | None = None  # (B, n) word map summed over the steps run
        self._blend_step: Tensor | None = None
        self._blend_layers = 0

    # -- steps
    def begin_step(self, k: int) -> None:
        """Start edit step k (0 = the first step the edit runs)."""
        self.step = k
        self._blend_step = None
        self._blend_layers = 0

    def end_step(self) -> None:
        """Add this step's layer-averaged blend map to the running sum."""
        if self._blend_step is not None:
            m = self._blend_step / self._blend_layers
            self.blend_total = m if self.blend_total is None else self.blend_total + m
        self.step = None

    def cross_active(self) -> bool:
        return self.step is not None and self.cross_steps[0] <= self.step < self.cross_steps[1]

    def self_active(self) -> bool:
        return self.step is not None and self.self_steps[0] <= self.step < self.self_steps[1]

    def wants(self, layer: Layer) -> bool:
        """Whether ``layer`` computes explicit attention maps at the current step."""
        if self.step is None:
            return False
        if layer.is_cross:
            return self.cross_active() or layer.records_blend
        return layer.controls_self and self.self_active()

    # -- maps
    def cond_rows(self, batch: int) -> slice:
        if batch == 2 * self.num_prompts:
            return slice(self.num_prompts, batch)
        if batch == self.num_prompts:
            return slice(0, batch)
        raise RuntimeError(f"attention batch of {batch} rows for {self.num_prompts} prompts")

    def control(self, layer: Layer, probs: Tensor) -> Tensor:
        """probs (b, heads, n, keys) float32 -> the controlled maps (same shape)."""
        self.calls += 1
        rows = self.cond_rows(probs.shape[0])
        cond = probs[rows]  # (B, heads, n, keys)
        base, own = cond[:1], cond[1:]
        if layer.is_cross and self.cross_active():
            mapped = torch.einsum("hpw,kwn->khpn", base[0], self.token_map.to(probs.device, probs.dtype))
            alpha = self.token_alpha.to(probs.device)[:, None, None, :]
            new = alpha * mapped + (1 - alpha) * own
            if self.equalizer is not None:
                new = new * self.equalizer.to(probs.device)[:, None, None, :]
            cond = torch.cat([base, new])
        elif not layer.is_cross and self.self_active():
            cond = torch.cat([base, base.expand_as(own)])
        if layer.is_cross and layer.records_blend and self.blend_weights is not None:
            words = (cond.mean(1) * self.blend_weights.to(probs.device)[:, None, :]).sum(-1)  # (B, n)
            self._blend_step = words if self._blend_step is None else self._blend_step + words
            self._blend_layers += 1
        out = probs.clone()
        out[rows] = cond
        return out

    def blend_mask(self, grid: tuple[int, int], size: tuple[int, int], threshold: float) -> Tensor:
        """(B, 1, h, w) float mask: row 0 the source's; rows 1.. the union with the source's."""
        assert self.blend_total is not None, "local blend needs at least one recorded step"
        b = self.blend_total.shape[0]
        maps = self.blend_total.reshape(b, 1, *grid)
        maps = F.max_pool2d(maps, 2 * BLEND_POOL + 1, stride=1, padding=BLEND_POOL)
        maps = F.interpolate(maps, size=size)
        peak = maps.amax(dim=(2, 3), keepdim=True)
        mask = torch.where(peak > 0, maps / peak.clamp(min=1e-30), torch.zeros_like(maps)) > threshold
        mask = mask | mask[:1]
        return mask.float()


class ControlledAttnProcessor:
    """Attention with explicit maps handed to the controller; else the layer's old processor.

    Mirrors ``AttnProcessor2_0`` (spatial/group norm, residual, output rescale) but computes
    softmax(q kᵀ · scale) in float32 so that the maps can be read and replaced.
    """

    def __init__(self, controller: AttentionController, layer: Layer, original: Any) -> None:
        self.controller = controller
        self.layer = layer
        self.original = original

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        if not self.controller.wants(self.layer):
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, positions, _ = hidden_states.shape
        if positions != self.layer.positions:
            raise RuntimeError(
                f"attention layer {self.layer.name} has {positions} query positions, expected "
                f"{self.layer.positions} ({self.layer.height}x{self.layer.width})"
            )
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        scores = (query.float() @ key.float().transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            scores = scores + mask.view(batch, attn.heads, -1, mask.shape[-1]).float()
        probs = self.controller.control(self.layer, scores.softmax(-1))
        hidden_states = (probs.to(value.dtype) @ value).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# --------------------------------------------------------------------------- the loop hook
class _P2PHook(StepHook):
    """Attention control in the one reverse loop: processors installed for the loop, the
    controller's step set around every network evaluation, the local blend after every step."""

    def __init__(
        self,
        unet: Any,
        processors: Mapping[str, Any],
        controller: AttentionController,
        start: int,
        blend_grid: tuple[int, int] | None,
        size: tuple[int, int],
        threshold: float,
    ) -> None:
        self.unet = unet
        self.processors = processors
        self.controller = controller
        self.start = start
        self.blend_grid = blend_grid
        self.size = size
        self.threshold = threshold
        self.mask: Tensor | None = None  # (B, 1, h, w): the last local-blend mask

    def installed(self) -> contextlib.AbstractContextManager:
        return attention_control(self.unet, self.processors)

    def before_eval(self, i: int) -> None:
        self.controller.begin_step(self.start - i)

    def after_eval(self, i: int) -> None:
        self.controller.end_step()

    def end_step(self, i: int) -> None:
        if self.blend_grid is not None:
            self.mask = self.controller.blend_mask(self.blend_grid, self.size, self.threshold)

    def after_step(self, i: int, x: Tensor) -> Tensor:
        if self.mask is None:
            return x
        return x[:1] + self.mask * (x - x[:1])


# --------------------------------------------------------------------------- the editor
@dataclass
class PromptToPromptResult:
    """Everything one Prompt-to-Prompt run produced."""

    source: Tensor  # (1, C, h, w): the source row (x0 again with edit-friendly inversion)
    targets: Tensor  # (K, C, h, w)
    mask: Tensor | None  # (K, 1, h, w) last local-blend mask of each target, or None
    modes: list[str]  # replace or refine, per target
    cross_steps: tuple[int, int]  # edit-step indices k with cross-attention control
    self_steps: tuple[int, int]
    controlled_layers: list[str]  # the processors installed
    controlled_calls: int  # attention evaluations that went through the controller


@EDITORS.register("prompt_to_prompt")
class PromptToPrompt(Editor):
    """Prompt-to-Prompt attention control on top of any inversion (see the module docstring)."""

    Options = PromptToPromptOptions

    def __init__(self, options: PromptToPromptOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        if o.mode not in MODES:
            raise ConfigError(f"prompt_to_prompt mode must be one of {', '.join(MODES)}, got {o.mode!r}")
        for key in ("cross_replace_steps", "self_replace_steps"):
            if getattr(o, key) is not None:
                parse_window(getattr(o, key), key)
        if not 0.0 <= o.max_self_resolution <= 1.0:
            raise ConfigError(f"max_self_resolution must be in [0, 1], got {o.max_self_resolution}")
        if not 0.0 < o.blend_resolution <= 1.0:
            raise ConfigError(f"blend_resolution must be in (0, 1], got {o.blend_resolution}")
        if not 0.0 <= o.threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {o.threshold}")
        if o.equalizer_words and len(o.equalizer_weights) not in (1, len(o.equalizer_words)):
            raise ConfigError(
                f"equalizer_weights needs one weight or one per word of equalizer_words "
                f"({len(o.equalizer_words)}), got {list(o.equalizer_weights)}"
            )
        if o.equalizer_weights and not o.equalizer_words:
            raise ConfigError("equalizer_weights given without equalizer_words (the words to reweight)")

    def windows(self, inversion: Inversion) -> tuple[tuple[float, float], tuple[float, float]]:
        """(cross, self) step windows as fractions: the options, or defaults by inversion kind."""
        kind = "ddim" if inversion.deterministic else "noise_maps"
        cross_default, self_default = DEFAULT_STEPS[kind]
        o = self.options
        cross = o.cross_replace_steps if o.cross_replace_steps is not None else cross_default
        selfs = o.self_replace_steps if o.self_replace_steps is not None else self_default
        return parse_window(cross, "cross_replace_steps"), parse_window(selfs, "self_replace_steps")

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
        """(K, C, h, w) float32: one edited latent per target prompt."""
        return self.run(backbone, inversion, source_prompt, target_prompts, skip=skip, generator=generator).targets

    @torch.no_grad()
    def run(
        self,
        backbone: Backbone,
        inversion: Inversion,
        source_prompt: str | None,
        target_prompts: Sequence[str],
        *,
        skip: int = DEFAULT_SKIP,
        generator: torch.Generator | None = None,
    ) -> PromptToPromptResult:
        """The edit with its source row, masks and bookkeeping (see :class:`PromptToPromptResult`)."""
        o = self.options
        targets = self.check_inputs(backbone, inversion, target_prompts)
        unet, tokenizer = backbone.attention_network(), backbone.prompt_tokenizer
        if unet is None or tokenizer is None:
            raise InputError(
                "prompt_to_prompt controls the attention of a diffusers UNet with a tokenizer; "
                f"{type(backbone).__name__} has none (use stable_diffusion or tiny)"
            )
        if source_prompt is None:
            source_prompt = inversion.source_prompt[0]
        if not isinstance(source_prompt, str):
            raise InputError(f"source_prompt must be a string, got {source_prompt!r}")
        start = inversion.check_skip(skip)
        n_steps = inversion.num_steps
        prompts = [source_prompt, *targets]
        k = len(targets)
        length = backbone.max_prompt_tokens

        # token maps of each target (replace or refine)
        maps = torch.empty(k, length, length)
        alpha = torch.empty(k, length)
        modes = []
        for j, tgt in enumerate(targets):
            maps[j], alpha[j], mode = token_mapping(tokenizer, source_prompt, tgt, o.mode, length)
            modes.append(mode)
        equalizer = self._equalizer(backbone, targets, length)
        blend = self._blend_weights(backbone, prompts, length)

        cross_w, self_w = self.windows(inversion)
        cross_steps, self_steps = step_range(cross_w, n_steps), step_range(self_w, n_steps)
        controller = AttentionController(
            len(prompts), maps, alpha, cross_steps, self_steps, equalizer, blend
        )

        # the layers to control
        rule = inversion.regeneration(
            backbone, start, len(prompts), generator=generator, n_source=1, shared_noise=True
        )
        h, w = rule.output().shape[-2:]
        layers = unet_layers(unet, h, w)
        self_limit = (o.max_self_resolution * h) * (o.max_self_resolution * w)
        self_on = self_steps[1] > self_steps[0]
        blend_grid = None
        if blend is not None:
            cross_grids = sorted({(ly.height, ly.width) for ly in layers if ly.is_cross}, reverse=True)
            goal = o.blend_resolution * h
            blend_grid = min(cross_grids, key=lambda g: (abs(g[0] - goal), -g[0]))
        chosen = []
        for layer in layers:
            if layer.is_cross:
                layer.records_blend = blend_grid is not None and (layer.height, layer.width) == blend_grid
                chosen.append(layer)
            elif self_on and layer.positions <= self_limit + 1e-6:
                layer.controls_self = True
                chosen.append(layer)
        before = unet.attn_processors
        processors = {ly.name: ControlledAttnProcessor(controller, ly, before[ly.name]) for ly in chosen}

        cond = backbone.encode_prompt(prompts)
        scales = torch.tensor([float(inversion.guidance_scale)] + [float(o.guidance_scale)] * k)
        hook = _P2PHook(unet, processors, controller, start, blend_grid, (h, w), o.threshold)
        x = denoise(
            backbone, rule, start, inversion_guidance(backbone, inversion, cond, scales), [hook], "prompt_to_prompt"
        )
        mask = hook.mask
        return PromptToPromptResult(
            source=x[:1],
            targets=x[1:],
            mask=None if mask is None else mask[1:],
            modes=modes,
            cross_steps=cross_steps,
            self_steps=self_steps,
            controlled_layers=[ly.name for ly in chosen],
            controlled_calls=controller.calls,
        )

    def _equalizer(self, backbone: Backbone, targets: list[str], length: int) -> Tensor | None:
        """(K, L) reweighting factors: the weights at the chosen words' positions, else 1."""
        o = self.options
        if not o.equalizer_words:
            return None
        weights = list(o.equalizer_weights) or [1.0]
        if len(weights) == 1:
            weights = weights * len(o.equalizer_words)
        eq = torch.ones(len(targets), length)
        found = False
        for row, prompt in enumerate(targets):
            for word, weight in zip(o.equalizer_words, weights):
                pos = [p for p in backbone.token_positions(prompt, word) if p < length]
                eq[row, pos] = float(weight)
                found = found or bool(pos)
        if not found:
            raise InputError(
                f"none of the equalizer_words {list(o.equalizer_words)} occurs in the target prompts {targets}"
            )
        return eq

    def _blend_weights(self, backbone: Backbone, prompts: list[str], length: int) -> Tensor | None:
        """(B, L): 1 at the positions of the blend words in each prompt (source first)."""
        o = self.options
        if not o.blend_words:
            return None
        weights = torch.zeros(len(prompts), length)
        for row, prompt in enumerate(prompts):
            for word in o.blend_words:
                pos = [p for p in backbone.token_positions(prompt, word) if p < length]
                weights[row, pos] = 1.0
        if not bool(weights.any()):
            raise InputError(f"none of the blend_words {list(o.blend_words)} occurs in the prompts {prompts}")
        return weights
