"""Temporary forward hooks on a diffusers UNet, shared by the attention-controlling editors.

Plug-and-Play and Zero-Shot (pix2pix-zero) read or overwrite intermediate activations of the
UNet: decoder residual-block features, self-attention queries/keys, cross-attention maps. They
do it with forward hooks on leaf modules (``resnet.conv2``, ``attn.to_q``, ``attn.to_k``) that
:func:`forward_hooks` installs for the duration of one ``with`` block and removes afterwards,
also when the block raises. The attention processors are never replaced, so whatever
processor the UNet uses (SDPA, xformers, sliced) keeps running.

Layer names are module paths inside the UNet (``up_blocks.1.resnets.1``). Defaults are given
for Stable Diffusion 1.x/2.x (4 up blocks of 3 resnets/attentions); :func:`resolve_layers`
maps them onto other UNets (the tiny test model has 2 up blocks of 2) with this rule: a path
the UNet has is used as it is; a path ``{down_blocks|up_blocks}.B.{resnets|attentions}.J`` that
it lacks is mapped to the nearest existing layer by clamping B to the last block (stepping back
to the nearest earlier block that has such layers, as the digits model's attention-free outermost
decoder block needs), then J to that block's last layer; duplicates are dropped. Any other
missing path is a configuration error.

The rule reads a layer name as a position in the decoder's structure, not as a module of SD 1.x:
block B is the decoder's (B+1)-th level from the coarsest, J the layer within it, and a level a
UNet lacks, or one without attention, falls back on the nearest level before it that has such
layers. SDXL's decoder (three levels: two with attention, then an attention-free outermost one)
has the digits model's structure, so both take the same levels: ``up_blocks.1.resnets.1`` (the
second level: 64² of SDXL's 128² latents at 1024²) and the self-attention of every layer of
``up_blocks.1`` (SD 1.x's finer attention levels 2 and 3 fall back on it).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from framework.errors import ConfigError, InputError

if TYPE_CHECKING:
    from framework.backbone import Backbone

_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)$")

Hook = Callable[[nn.Module, Any, Any], Any]


def unet_of(backbone: Backbone, editor: str) -> nn.Module:
    """The backbone's diffusers UNet; editors that control layers need one."""
    unet = backbone.attention_network()
    if not isinstance(unet, nn.Module):
        raise InputError(
            f"the {editor} editor controls UNet layers, but the backbone {type(backbone).__name__} "
            "has no diffusers UNet (.unet); use a Stable Diffusion backbone (sd14, sd15, sd21, sdxl, "
            "tiny, tiny_v, tiny_xl)"
        )
    return unet


def _has(unet: nn.Module, path: str) -> bool:
    try:
        unet.get_submodule(path)
    except AttributeError:
        return False
    return True


def resolve_layer(unet: nn.Module, path: str, what: str) -> str:
    """Map one configured layer path onto ``unet`` (see the module docstring for the rule)."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{what}: layer names must be non-empty strings, got {path!r}")
    if _has(unet, path):
        return path
    m = _LAYER.match(path)
    if m is None:
        raise ConfigError(
            f"{what}: the UNet has no layer {path!r}; give module paths such as "
            "up_blocks.1.resnets.1 or up_blocks.2.attentions.0"
        )
    group, b, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
    blocks = getattr(unet, group, None)
    if not blocks:
        raise ConfigError(f"{what}: the UNet has no {group} (layer {path!r})")
    b = min(b, len(blocks) - 1)
    # a block without such layers (e.g. a small UNet's attention-free outermost block): the
    # nearest block before it that has them
    while b > 0 and not getattr(blocks[b], kind, None):
        b -= 1
    layers = getattr(blocks[b], kind, None)
    if not layers:
        raise ConfigError(
            f"{what}: layer {path!r} maps to {group}.{b}, which has no {kind}; name a block that has"
        )
    return f"{group}.{b}.{kind}.{min(j, len(layers) - 1)}"


def resolve_layers(unet: nn.Module, paths: Sequence[str], what: str) -> list[str]:
    """Resolve every path of ``paths``; order kept, duplicates dropped."""
    if isinstance(paths, str):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        r = resolve_layer(unet, p, what)
        if r not in out:
            out.append(r)
    return out


def attention_modules(unet: nn.Module, layer: str, which: str) -> list[nn.Module]:
    """The attention modules named ``which`` (``attn1``: self, ``attn2``: cross) under ``layer``
    (``""``: the whole UNet), in module order."""
    root = unet.get_submodule(layer) if layer else unet
    found = [
        m for name, m in root.named_modules() if name.split(".")[-1] == which and hasattr(m, "to_q")
    ]
    return found


@contextlib.contextmanager
def forward_hooks(pairs: Iterable[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Register ``module.register_forward_hook(fn)`` for each pair inside the block only."""
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def hook_state(unet: nn.Module) -> dict[str, tuple]:
    """A snapshot of every module's hooks and attention processor (to check restoration)."""
    state = {}
    for name, m in unet.named_modules():
        state[name] = (
            tuple(m._forward_hooks.keys()),
            tuple(m._forward_pre_hooks.keys()),
            id(getattr(m, "processor", None)),
        )
    return state


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, n, heads·d) -> (B, heads, n, d)."""
    b, n, hd = x.shape
    return x.reshape(b, n, heads, hd // heads).transpose(1, 2)


def attention_probs(attn: nn.Module, query: Tensor, key: Tensor) -> Tensor:
    """softmax(scale · q kᵀ) per head, float32: (B, n_q, heads·d) and (B, n_k, heads·d) ->
    (B, heads, n_q, n_k). These are the maps the module's processor computes (no mask in SD)."""
    q = split_heads(query.float(), attn.heads)
    k = split_heads(key.float(), attn.heads)
    scores = torch.matmul(q, k.transpose(-1, -2)) * float(attn.scale)
    return scores.softmax(dim=-1)


def broadcast_first_row(x: Tensor, group: int) -> Tensor:
    """Within each consecutive group of ``group`` batch rows, copy the group's first row over
    the others: (B, ...) -> (B, ...), B a multiple of ``group``. The CFG batch
    [uncond: source, targets...; cond: source, targets...] has two groups."""
    b = x.shape[0]
    if b % group:
        raise RuntimeError(f"batch of {b} rows is not a multiple of the group size {group}")
    v = x.reshape(b // group, group, *x.shape[1:])
    return v[:, :1].expand_as(v).reshape(x.shape)


# ------------------------------------------------------------------ the source branch
SOURCE_LATENTS = ("regenerate", "inversion")


def check_source_latents(value: str, what: str) -> str:
    """Validate the ``source_latents`` option (how the source/reference row moves)."""
    if value not in SOURCE_LATENTS:
        raise ConfigError(f"{what}.source_latents must be one of {', '.join(SOURCE_LATENTS)}, got {value!r}")
    return value


def follows_inversion(mode: str, inversion: Any, schedule: Any) -> bool:
    """Whether the source row takes x_i from the inversion's stored trajectory at every step.

    ``inversion`` mode always does. ``regenerate`` mode runs the source row through the
    inversion's step rule (eq. 3 with its noise maps, EDICT's coupled update), which reproduces
    the stored trajectory for edit-friendly, CycleDiffusion and EDICT inversions and follows it
    (up to the reconstruction error) for DDIM-like ones; an inversion without noise maps but
    with σ > 0 cannot be regenerated and is followed instead.
    """
    return mode == "inversion" or (inversion.zs is None and bool((schedule.sigma > 0).any()))
