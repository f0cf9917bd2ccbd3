"""Prompt conditioning as a typed object of row-aligned tensors, and the row operations the loop uses.

A backbone encodes prompts into its conditioning; the loop, guidance and the batched inversion
only select, broadcast, repeat, concatenate and replace rows of it. Stable Diffusion 1.x
conditions on one tensor, the text encoder's hidden states (K, L, D): :class:`Conditioning`
holds it as ``embeds``. A family that needs more adds fields to a subclass, each a tensor
with one row per prompt, and every row operation carries them along without any change to the
loop. SDXL, for instance (diffusers' ``StableDiffusionXLPipeline.encode_prompt`` and
``_get_add_time_ids``), would be::

    @dataclass(frozen=True)
    class SDXLConditioning(Conditioning):
        pooled: Tensor     # (K, 1280): the second text encoder's pooled output ("text_embeds")
        time_ids: Tensor   # (K, 6): original size, crop corner, target size ("time_ids")

with ``embeds`` the two encoders' hidden states concatenated (K, 77, 2048); its backbone's
``model_output`` passes ``added_cond_kwargs={"text_embeds": c.pooled, "time_ids": c.time_ids}``.

The module functions (:func:`broadcast_rows`, :func:`tile`, :func:`cat_rows`,
:func:`replace_rows`, :func:`num_rows`) accept either a plain tensor (what the SD 1.x backbones
return today) or a :class:`Conditioning`, so the loop is the same for both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import torch
from torch import Tensor

from framework.errors import InputError

C = TypeVar("C", bound="Conditioning")


@dataclass(frozen=True)
class Conditioning:
    """Row-aligned conditioning tensors: row k of every field belongs to prompt k."""

    embeds: Tensor  # (K, L, D): the text encoder's hidden states

    # ----------------------------------------------------------------- fields
    def tensors(self) -> dict[str, Tensor]:
        """Every tensor field by name (fields left None are skipped)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                out[f.name] = value
        return out

    def map(self: C, fn: Callable[[Tensor], Tensor]) -> C:
        """The same conditioning with ``fn`` applied to every tensor field."""
        return dataclasses.replace(self, **{k: fn(v) for k, v in self.tensors().items()})

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def device(self) -> torch.device:
        return self.embeds.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embeds.dtype

    # ----------------------------------------------------------------- row operations
    def rows(self: C, idx: int | slice | Sequence[int] | Tensor) -> C:
        """The rows ``idx`` (an int keeps its row dimension)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return self.map(lambda v: v[idx])

    def repeat(self: C, n: int) -> C:
        """The whole block of rows ``n`` times: (K, ...) -> (n·K, ...)."""
        return self.map(lambda v: v.repeat(n, *([1] * (v.dim() - 1))))

    def expand(self: C, b: int) -> C:
        """One row broadcast to ``b`` rows (a view); ``b`` rows as they are."""
        if len(self) == b:
            return self
        if len(self) != 1:
            raise InputError(f"conditioning has {len(self)} rows for a batch of {b}")
        return self.map(lambda v: v.expand(b, *v.shape[1:]))

    @classmethod
    def cat(cls: type[C], parts: Sequence[C]) -> C:
        """The rows of ``parts`` one after the other (all of one type)."""
        first = parts[0]
        names = first.tensors().keys()
        return dataclasses.replace(first, **{k: torch.cat([p.tensors()[k] for p in parts]) for k in names})

    def replace_rows(self: C, idx: int | slice | Sequence[int] | Tensor, other: C) -> C:
        """A copy whose rows ``idx`` are ``other``'s (broadcast from one row)."""
        theirs = other.tensors()

        def put(name: str, v: Tensor) -> Tensor:
            out = v.clone()
            out[idx] = theirs[name].to(out.device, out.dtype)
            return out

        return dataclasses.replace(self, **{k: put(k, v) for k, v in self.tensors().items()})

    def to(self: C, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> C:
        return self.map(lambda v: v.to(device=device, dtype=dtype))

    def clone(self: C) -> C:
        return self.map(lambda v: v.clone())

    def detach(self: C) -> C:
        return self.map(lambda v: v.detach())


#: what a backbone's ``encode_prompt`` may return: a plain tensor (SD 1.x), a Conditioning, None
Cond: TypeAlias = "Tensor | Conditioning | None"


def num_rows(c: Tensor | Conditioning) -> int:
    """Rows of a conditioning."""
    return len(c) if isinstance(c, Conditioning) else int(c.shape[0])


def broadcast_rows(c: Cond, b: int) -> Cond:
    """A (1, ...) conditioning broadcast to ``b`` rows; a (b, ...) one as it is."""
    if c is None:
        return None
    if isinstance(c, Conditioning):
        return c.expand(b)
    if c.shape[0] == b:
        return c
    if c.shape[0] == 1:
        return c.expand(b, *c.shape[1:])
    raise InputError(f"conditioning has {c.shape[0]} rows for a batch of {b}")


def tile(c: Cond, s: int, b: int) -> Cond:
    """Conditioning for s steps of b images: one row stays (broadcast later), b rows -> s·b."""
    if c is None or num_rows(c) == 1 or s == 1:
        return c
    if isinstance(c, Conditioning):
        return c.repeat(s)
    return c.repeat(s, *([1] * (c.dim() - 1)))


def cat_rows(parts: Sequence[Tensor | Conditioning]) -> Tensor | Conditioning:
    """The rows of ``parts`` one after the other."""
    if isinstance(parts[0], Conditioning):
        return type(parts[0]).cat(parts)  # type: ignore[arg-type]
    return torch.cat(list(parts))  # type: ignore[arg-type]


def replace_rows(
    c: Tensor | Conditioning, idx: slice, other: Tensor | Conditioning, batch: int
) -> Tensor | Conditioning:
    """``c`` broadcast to ``batch`` rows, with the rows ``idx`` replaced by ``other`` (a copy)."""
    base = broadcast_rows(c, batch)
    if isinstance(base, Conditioning):
        assert isinstance(other, Conditioning)
        return base.replace_rows(idx, other)
    out = base.clone()
    out[idx] = other
    return out
