"""Device-independent random numbers: noise is drawn on the CPU from a ``torch.Generator``
and then moved, so a seed gives the same noise maps on CPU and GPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


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
