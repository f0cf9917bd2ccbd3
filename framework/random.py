"""Device-independent random numbers: noise is drawn on the CPU from a ``torch.Generator``
and then moved, so a seed gives the same noise maps on CPU and GPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from framework.errors import InputError


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Standard normal float32 noise of ``shape``, drawn on the CPU, moved to ``device``."""
    if generator is not None and generator.device.type != "cpu":
        return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)


def make_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with ``seed`` (None: use torch's global RNG)."""
    if seed is None:
        return None
    return torch.Generator("cpu").manual_seed(int(seed))


def check_seed(seed: object, what: str = "seed") -> int:
    """A seed torch's generators take: an integer in [-2**63, 2**64 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"{what} must be an integer, got {seed!r}")
    if not -(2**63) <= seed < 2**64:
        raise InputError(f"{what} {seed} does not fit in 64 bits; use an integer in 0..{2**64 - 1}")
    return seed
