"""Coloured scikit-learn digits: the data of the ``digits`` model, its dataset and its metrics.

scikit-learn's bundled digits (``load_digits``: 1797 gray 8×8 images, values 0..16) are
rendered in colour: intensity a = value/16, upsampled bilinearly to the model's resolution,
pixel = a·fg + (1 − a)·bg, with two different colours of :data:`PALETTE`. The prompt of an
image is exactly ``a {fg} {digit} on a {bg} background`` (digit words ``zero`` … ``nine``).
Images with index < :data:`TRAIN_END` (1500) are the training split; indices 1500..1796 are the
held-out split, never used in training.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from framework.errors import InputError

#: the six colours, RGB 0..255
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 220),
    "yellow": (230, 210, 40),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: every word of the prompt grammar
WORDS: tuple[str, ...] = ("a", "on", "background", *COLORS, *DIGIT_WORDS)
TRAIN_END = 1500
N_IMAGES = 1797
PROMPT_RE = re.compile(r"^a (\w+) (\w+) on a (\w+) background$")


def prompt(digit: int, fg: str, bg: str) -> str:
    """``a {fg} {digit word} on a {bg} background``."""
    return f"a {fg} {DIGIT_WORDS[digit]} on a {bg} background"


def parse_prompt(text: str) -> tuple[int, str, str]:
    """The (digit, fg, bg) of a grammar prompt; InputError for anything else."""
    m = PROMPT_RE.match(text.strip())
    if not m or m.group(2) not in DIGIT_WORDS or m.group(1) not in PALETTE or m.group(3) not in PALETTE:
        raise InputError(
            f"{text!r} is not a digits prompt; accepted: 'a {{fg}} {{digit}} on a {{bg}} background' with "
            f"colours {', '.join(COLORS)} and digits {', '.join(DIGIT_WORDS)}"
        )
    return DIGIT_WORDS.index(m.group(2)), m.group(1), m.group(3)


def palette_tensor() -> Tensor:
    """(6, 3) float32 colours in [0, 1], in :data:`COLORS` order."""
    return torch.tensor([PALETTE[c] for c in COLORS], dtype=torch.float32) / 255.0


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def labels(indices: Tensor | np.ndarray | list[int] | None = None) -> Tensor:
    """The digit labels (n,) int64 of ``indices`` (default: all 1797)."""
    _, y = _digits()
    y_t = torch.from_numpy(y)
    return y_t if indices is None else y_t[torch.as_tensor(indices, dtype=torch.long)]


def intensities(indices: Tensor | np.ndarray | list[int] | None, resolution: int) -> Tensor:
    """Intensities a in [0, 1], (n, 1, R, R) float32: value/16 upsampled bilinearly."""
    x, _ = _digits()
    a = torch.from_numpy(x)[:, None]
    if indices is not None:
        a = a[torch.as_tensor(indices, dtype=torch.long)]
    if resolution != 8:
        a = F.interpolate(a, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return a.clamp(0, 1)


def render(a: Tensor, fg: Tensor, bg: Tensor) -> Tensor:
    """Colour intensities a (n, 1, R, R) with fg, bg (n, 3) in [0, 1] -> images (n, 3, R, R) in [-1, 1]."""
    img = a * fg[:, :, None, None] + (1 - a) * bg[:, :, None, None]
    return img * 2 - 1


def render_indices(indices: list[int] | Tensor, fgs: list[str], bgs: list[str], resolution: int) -> Tensor:
    """Images (n, 3, R, R) in [-1, 1] of digit images ``indices`` in the named colours."""
    for c in (*fgs, *bgs):
        if c not in PALETTE:
            raise InputError(f"unknown colour {c!r}; accepted: {', '.join(COLORS)}")
    pal = palette_tensor()
    fg = pal[[COLORS.index(c) for c in fgs]]
    bg = pal[[COLORS.index(c) for c in bgs]]
    return render(intensities(indices, resolution), fg, bg)


def color_pairs() -> list[tuple[int, int]]:
    """The 30 ordered (fg, bg) index pairs with fg ≠ bg."""
    return [(i, j) for i in range(len(COLORS)) for j in range(len(COLORS)) if i != j]


def random_colourings(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n random (fg, bg) colour indices with fg ≠ bg, uniform over the 30 pairs: two (n,) int64."""
    pairs = torch.tensor(color_pairs())
    pick = pairs[torch.randint(len(pairs), (n,), generator=generator)]
    return pick[:, 0], pick[:, 1]


def split_indices(split: str) -> list[int]:
    """``train`` (0..1499) or ``heldout`` (1500..1796)."""
    if split == "train":
        return list(range(TRAIN_END))
    if split in ("heldout", "test"):
        return list(range(TRAIN_END, N_IMAGES))
    raise InputError(f"unknown digits split {split!r}; accepted: train, heldout")


# ----------------------------------------------------------------------------- held-out edit items
def item_spec(index: int, seed: int, edits: list[str]) -> tuple[int, str, str, list[str], list[str]]:
    """(digit, fg, bg, target prompts, their edit kinds) of held-out image ``index``."""
    g = torch.Generator().manual_seed(seed * 100003 + index)
    digit = int(labels([index])[0])
    fg_i, bg_i = (int(v[0]) for v in random_colourings(1, g))
    fg, bg = COLORS[fg_i], COLORS[bg_i]
    others = [c for c in COLORS if c not in (fg, bg)]
    new_fg = others[int(torch.randint(len(others), (), generator=g))]
    new_bg = others[int(torch.randint(len(others), (), generator=g))]
    digits = [d for d in range(10) if d != digit]
    new_digit = digits[int(torch.randint(len(digits), (), generator=g))]
    targets = {
        "fg": prompt(digit, new_fg, bg),
        "bg": prompt(digit, fg, new_bg),
        "digit": prompt(new_digit, fg, bg),
    }
    return digit, fg, bg, [targets[k] for k in edits], list(edits)


def pick_indices(per_digit: int) -> list[int]:
    """Held-out indices, round-robin over the digits: the first ``per_digit`` of each digit."""
    held = split_indices("heldout")
    y = labels(held).tolist()
    by_digit: dict[int, list[int]] = {d: [i for i, lab in zip(held, y) if lab == d] for d in range(10)}
    depth = max(len(v) for v in by_digit.values()) if per_digit <= 0 else per_digit
    return [by_digit[d][r] for r in range(depth) for d in range(10) if r < len(by_digit[d])]
