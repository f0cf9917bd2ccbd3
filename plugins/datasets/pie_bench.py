"""PIE-Bench (Ju et al., "Direct Inversion", 2023): ``mapping_file.json``.

The file maps a key (e.g. ``"000000000000"``) to an entry with ``image_path`` (relative to the
``annotation_images`` folder beside the file), ``original_prompt``, ``editing_prompt`` (the
edited words are marked with ``[ ]``, stripped here), ``blended_word``, ``editing_type_id``,
``editing_instruction`` and ``mask``.

The mask convention, as read from PIE-Bench's own ``mask_decode``: ``mask`` is a flat list of
pairs ``start, length`` over the row-major flattened H×W image (512×512 in PIE-Bench); each
pair sets ``length`` pixels from ``start`` to 1 (clipped at the end of the image). PIE-Bench
then also sets the one-pixel image border to 1 "to avoid annotation errors in boundary"
(option ``border``, on by default as in the benchmark). 1 marks the edited region; the
benchmark's background metrics use 1 - mask. The mask is decoded at the image's own
resolution (the image is read for its size when that is not 512×512).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from framework.dataset import DatasetPlugin, Item, check_unique
from framework.errors import ConfigError, InputError
from framework.registry import DATASETS


@dataclass
class PieBenchOptions:
    """Options of the ``pie_bench`` dataset."""

    path: str = ""  # mapping_file.json
    image_root: str = ""  # folder of the images (default: annotation_images/ beside the file, else its folder)
    editing_types: list[int] = field(default_factory=list)  # keep only these editing_type_id values (empty: all)
    border: bool = True  # set the 1-pixel border of the mask to 1, as PIE-Bench's mask_decode does
    limit: int = 0  # use only the first ``limit`` entries (0: all)


def strip_marks(prompt: str) -> str:
    """Remove PIE-Bench's ``[`` ``]`` edit marks and collapse the spaces they leave."""
    return re.sub(r"\s+", " ", prompt.replace("[", "").replace("]", "")).strip()


def decode_rle(encoded: Sequence[int], height: int, width: int, border: bool = True) -> np.ndarray:
    """PIE-Bench RLE (``start, length`` pairs over the row-major flat image) -> (H, W) uint8 {0, 1}."""
    values = [int(v) for v in encoded]
    if len(values) % 2:
        raise InputError(f"a PIE-Bench mask must hold start,length pairs; got an odd count {len(values)}")
    total = height * width
    flat = np.zeros(total, dtype=np.uint8)
    for start, length in zip(values[0::2], values[1::2]):
        if start < 0 or length < 0:
            raise InputError(f"a PIE-Bench mask has a negative start or length ({start}, {length})")
        end = min(start + length, total)
        if start < total:
            flat[start:end] = 1
    mask = flat.reshape(height, width)
    if border:
        mask[0, :] = mask[-1, :] = 1
        mask[:, 0] = mask[:, -1] = 1
    return mask


def encode_rle(mask: np.ndarray) -> list[int]:
    """The inverse of :func:`decode_rle` without the border rule: (H, W) {0,1} -> [start, length, ...]."""
    flat = np.concatenate([[0], np.asarray(mask).reshape(-1).astype(np.int8) > 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    out: list[int] = []
    for s, e in zip(starts, ends):
        out += [int(s), int(e - s)]
    return out


class _LazyMask:
    """Decode the mask on demand at the image's resolution (a picklable callable)."""

    def __init__(self, encoded: list[int], image_path: str, border: bool) -> None:
        self.encoded, self.image_path, self.border = encoded, image_path, border

    def __call__(self) -> np.ndarray:
        try:
            with Image.open(self.image_path) as img:
                width, height = img.size
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the size of {self.image_path} to decode its mask: {exc}") from None
        return decode_rle(self.encoded, height, width, self.border)


@DATASETS.register("pie_bench")
class PieBenchDataset(DatasetPlugin):
    """PIE-Bench's mapping_file.json: 700 images, one target each, with edit masks."""

    Options = PieBenchOptions

    def items(self) -> list[Item]:
        path = Path(self.options.path)
        if not self.options.path or not path.is_file():
            raise ConfigError(f"the pie_bench dataset needs data.path = mapping_file.json, got {self.options.path!r}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not read {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must map keys to entries (PIE-Bench's mapping_file.json)")
        if self.options.image_root:
            root = Path(self.options.image_root)
        elif (path.parent / "annotation_images").is_dir():
            root = path.parent / "annotation_images"
        else:
            root = path.parent
        keep = {int(t) for t in (self.options.editing_types or ())}
        items = []
        for key, entry in raw.items():
            item = self._item(str(key), entry, root, path)
            if keep and int(item.extras.get("editing_type_id", -1)) not in keep:
                continue
            items.append(item)
        if self.options.limit > 0:
            items = items[: self.options.limit]
        return check_unique(items, str(path))

    def _item(self, key: str, entry: Any, root: Path, path: Path) -> Item:
        where = f"{path} entry {key!r}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping")
        missing = [k for k in ("image_path", "original_prompt", "editing_prompt") if k not in entry]
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)}")
        image_path = str(root / str(entry["image_path"]))
        encoded = entry.get("mask")
        mask = _LazyMask(list(encoded), image_path, self.options.border) if encoded is not None else None
        extras = {
            "blended_word": entry.get("blended_word", ""),
            "editing_type_id": _as_int(entry.get("editing_type_id", -1)),
            "editing_instruction": entry.get("editing_instruction", ""),
            "editing_prompt_marked": entry["editing_prompt"],
        }
        return Item(
            id=key,
            image_path=image_path,
            source_prompt=strip_marks(str(entry["original_prompt"])),
            target_prompts=[strip_marks(str(entry["editing_prompt"]))],
            mask=mask,
            extras=extras,
        )


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
