"""The dataset plugin interface: items, the plugin base class, and the helpers plugins share.

A dataset plugin (``plugins/datasets/*``, registered in ``DATASETS``) lists :class:`Item`\\ s.
Listing reads only the index file (YAML list, ``mapping_file.json``, captions file); images
and masks are loaded lazily by the runner, so a missing or corrupt image fails that item only.
Every item has a stable id derived from its relative path or key, never from its position.

Nothing here imports Lightning: ``editfriendly edit``/``list`` and the plugins use this module;
the runner's DataModule is :class:`framework.experiment.data.EditDataModule`.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from framework.errors import ConfigError, InputError


@dataclass
class Item:
    """One dataset entry: an image with its source prompt and target prompts.

    ``mask`` is a zero-argument callable returning an (H, W) array in {0, 1} at the image's own
    resolution (1 marks the region to edit), or None. It is called lazily by the runner so a bad
    mask fails only this item.
    """

    id: str
    image_path: str
    source_prompt: str
    target_prompts: list[str]
    mask: Callable[[], np.ndarray] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class DatasetPlugin(abc.ABC):
    """A source of :class:`Item`\\ s. Subclasses define ``Options`` (with at least ``path``)."""

    Options: type
    registered_name: str

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abc.abstractmethod
    def items(self) -> list[Item]:
        """Every item of the dataset, in a deterministic order; ids are unique."""


def resolve_path(path: str | Path, base: str | Path | None = None) -> Path:
    """``path`` as given when absolute or existing from the working directory, else relative to ``base``."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute() or base is None:
        return p
    return Path(base) / p


def check_unique(items: Sequence[Item], source: str) -> list[Item]:
    """Reject duplicate ids (they would collide in results.csv)."""
    seen: dict[str, int] = {}
    for k, item in enumerate(items):
        if item.id in seen:
            raise ConfigError(
                f"{source}: item id {item.id!r} occurs twice (entries {seen[item.id]} and {k}); ids come "
                "from the image path (or key) and must be unique: give the entries distinct 'id' fields"
            )
        seen[item.id] = k
    return list(items)


def as_prompt_list(value: Any, what: str) -> list[str]:
    """A target prompt or a list of them -> list of strings (an error names ``what``)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{what} must be a prompt or a non-empty list of prompts, got {value!r}")


def item_seed(run_seed: int, item_id: str, index: int = 0) -> int:
    """A stable 31-bit seed from the run seed, the item id and the seed index (no rank, no order)."""
    digest = hashlib.sha256(f"{int(run_seed)}/{item_id}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def fit_mask(mask: np.ndarray, image_size: tuple[int, int], out_size: tuple[int, int]) -> Tensor:
    """Apply the image sizing policy to a mask: (H, W) in {0,1} -> (1, 1, h, w) float {0, 1}.

    ``image_size`` is the source image's (W, H) (the mask must match it); ``out_size`` is the
    (W, H) the model saw. As with images, the mask is center-cropped/scaled to cover
    ``out_size`` (bilinear, then thresholded at 0.5).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    if (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise InputError(
            f"the mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image_size[0]}x{image_size[1]}"
        )
    pil = Image.fromarray((mask > 0.5).astype(np.uint8) * 255, mode="L")
    src_w, src_h = image_size
    if out_size[0] == out_size[1] and src_w != src_h:  # the default policy: square crop first
        side = min(src_w, src_h)
        pil = ImageOps.fit(pil, (side, side), method=Image.Resampling.BILINEAR)
    if pil.size != tuple(out_size):
        pil = ImageOps.fit(pil, tuple(out_size), method=Image.Resampling.BILINEAR)
    arr = (np.asarray(pil, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32)
    return torch.from_numpy(arr)[None, None]


def build_dataset(cfg: Any) -> DatasetPlugin:
    """The dataset plugin that ``cfg`` (``{name: ..., path: ...}``) names."""
    from framework.registry import DATASETS

    if cfg is None:
        raise ConfigError("the experiment needs a 'data' entry, e.g. data: {name: yaml_list, path: data/example.yaml}")
    return DATASETS.build(cfg)
