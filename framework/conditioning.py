"""Prompt conditioning as a typed object of row-aligned tensors, and the operations on it.

Every prompt-conditioned backbone's ``encode_prompt`` returns a :class:`Conditioning` (an
unconditional one returns None), and its ``model_output`` reads the fields it needs. Stable
Diffusion 1.x and the text-conditional pixel models condition on one tensor, the text encoder's
hidden states (K, L, D), held as ``embeds``. A family that needs more adds fields to a
subclass, each a tensor with one row per prompt. SDXL (diffusers'
``StableDiffusionXLPipeline.encode_prompt``; ``plugins/backbones/sdxl.py``), for instance::

    @dataclass(frozen=True)
    class SDXLConditioning(Conditioning):
        pooled: Tensor     # (K, 1280): the second text encoder's pooled output ("text_embeds")

        learnable = ("embeds", "pooled")

with ``embeds`` the two encoders' hidden states concatenated (K, 77, 2048); its backbone's
``model_output`` passes ``added_cond_kwargs={"text_embeds": c.pooled, "time_ids": ...}`` with
the added time ids made from the latent's size (they describe the image, not the prompt).

Nothing outside a backbone touches a field by name. The loop, guidance and the batched
inversion only select, broadcast, repeat, concatenate and replace rows (:meth:`~Conditioning.rows`,
:meth:`~Conditioning.expand`, :meth:`~Conditioning.repeat`, :meth:`~Conditioning.cat`,
:meth:`~Conditioning.replace_rows`, and the module functions :func:`broadcast_rows`,
:func:`tile`, :func:`cat_rows`, :func:`replace_rows`, :func:`num_rows`), and the methods
that compute with conditionings do so field by field, so that every field comes along:

* Zero-Shot's edit direction (mean over sentences, target minus source, source plus
  direction): :meth:`~Conditioning.map`, :meth:`~Conditioning.zip_map`,
  :meth:`~Conditioning.sum_rows`;
* null-text inversion optimises the fields a class declares in ``learnable`` (SD 1.x: the
  hidden states; SDXL: both encoders' parts, ``embeds`` and ``pooled``) of the unconditional
  conditioning, one optimizer over all of them (:meth:`~Conditioning.learnable_leaves`,
  :meth:`~Conditioning.with_tensors`); the other fields stay as encoded;
* per-step conditionings (null-text's per-step unconditional ones, negative-prompt
  inversion's one for all steps) are one conditioning of the same type whose fields have a
  leading step axis (:meth:`~Conditioning.stack`, :meth:`~Conditioning.at`); it is an ordinary
  dataclass of tensors, so an :class:`~framework.inversion.Inversion` holding it pickles and
  moves between devices as before;
* negative-prompt inversion and Plug-and-Play swap whole conditionings
  (:meth:`~Conditioning.equal` tells whether two are the same).

The module functions also accept a plain tensor (one field), for callers that hold one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeAlias, TypeVar

import torch
from torch import Tensor

from framework.errors import InputError

C = TypeVar("C", bound="Conditioning")


@dataclass(frozen=True)
class Conditioning:
    """Row-aligned conditioning tensors: row k of every field belongs to prompt k."""

    embeds: Tensor  # (K, L, D): the text encoder's hidden states

    #: the fields an optimisation of the conditioning changes (null-text inversion optimises
    #: them in the unconditional conditioning); the other fields stay fixed. A subclass sets it
    #: as a plain class attribute (``learnable = ("embeds", "pooled")``, no annotation, so that
    #: it is not a field)
    learnable: ClassVar[tuple[str, ...]] = ("embeds",)

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

    def zip_map(self: C, other: Conditioning, fn: Callable[[Tensor, Tensor], Tensor]) -> C:
        """The same conditioning with ``fn(mine, theirs)`` for every tensor field: an elementwise
        combination of two conditionings of one type (rows broadcast as tensors do)."""
        theirs = other.tensors()
        mine = self.tensors()
        if type(other) is not type(self) or theirs.keys() != mine.keys():
            raise InputError(
                f"cannot combine a {type(self).__name__} with fields {sorted(mine)} and a "
                f"{type(other).__name__} with fields {sorted(theirs)}"
            )
        return dataclasses.replace(self, **{k: fn(v, theirs[k]) for k, v in mine.items()})

    def with_tensors(self: C, tensors: Mapping[str, Tensor]) -> C:
        """The same conditioning with the fields named in ``tensors`` replaced."""
        return dataclasses.replace(self, **tensors)

    def equal(self, other: object) -> bool:
        """Whether ``other`` is a conditioning of the same type with equal fields (``torch.equal``)."""
        if type(other) is not type(self):
            return False
        assert isinstance(other, Conditioning)
        mine, theirs = self.tensors(), other.tensors()
        return mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())

    # ----------------------------------------------------------------- optimisation
    def learnable_leaves(self) -> dict[str, Tensor]:
        """Detached copies of the ``learnable`` fields, leaf tensors that require grad: what an
        optimizer updates; :meth:`with_tensors` puts them back into the conditioning."""
        fields = self.tensors()
        missing = [k for k in self.learnable if k not in fields]
        if missing:
            raise TypeError(f"{type(self).__name__}.learnable names {missing}, which are not tensor fields")
        return {k: fields[k].detach().clone().requires_grad_(True) for k in self.learnable}

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

    def sum_rows(self: C) -> C:
        """One row: the sum of the rows of every field."""
        return self.map(lambda v: v.sum(0, keepdim=True))

    def mean_rows(self: C) -> C:
        """One row: the mean of the rows of every field."""
        return self.map(lambda v: v.mean(0, keepdim=True))

    def replace_rows(self: C, idx: int | slice | Sequence[int] | Tensor, other: C) -> C:
        """A copy whose rows ``idx`` are ``other``'s (broadcast from one row)."""
        theirs = other.tensors()

        def put(name: str, v: Tensor) -> Tensor:
            out = v.clone()
            out[idx] = theirs[name].to(out.device, out.dtype)
            return out

        return dataclasses.replace(self, **{k: put(k, v) for k, v in self.tensors().items()})

    # ----------------------------------------------------------------- stacks of conditionings
    @classmethod
    def stack(cls: type[C], parts: Sequence[C]) -> C:
        """Conditionings of one type and shape stacked on a new leading axis (every field
        (S, K, ...)): per-step conditionings, entry s for step s+1. ``len`` is then S."""
        first = parts[0]
        names = first.tensors().keys()
        return dataclasses.replace(first, **{k: torch.stack([p.tensors()[k] for p in parts]) for k in names})

    def at(self: C, s: int) -> C:
        """Entry ``s`` of a stacked conditioning (:meth:`stack`): every field indexed on its
        leading axis."""
        return self.map(lambda v: v[s])

    # ----------------------------------------------------------------- device and dtype
    def to(self: C, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> C:
        return self.map(lambda v: v.to(device=device, dtype=dtype))

    def clone(self: C) -> C:
        return self.map(lambda v: v.clone())

    def detach(self: C) -> C:
        return self.map(lambda v: v.detach())


#: what a backbone's ``encode_prompt`` returns: a Conditioning, or None for an unconditional model
Cond: TypeAlias = "Conditioning | None"


def num_rows(c: Tensor | Conditioning) -> int:
    """Rows of a conditioning."""
    return len(c) if isinstance(c, Conditioning) else int(c.shape[0])


def broadcast_rows(c: Tensor | Conditioning | None, b: int) -> Tensor | Conditioning | None:
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


def tile(c: Tensor | Conditioning | None, s: int, b: int) -> Tensor | Conditioning | None:
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
