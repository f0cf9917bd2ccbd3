"""``digits``: held-out coloured digits with target prompts that change one attribute each.

Images are scikit-learn digits of the held-out split (indices 1500..1796, never used to train
the ``digits`` model), rendered as in :mod:`framework.digits`. Each item is one image in a
source colouring with prompt ``a {fg} {digit} on a {bg} background`` and up to three target
prompts, each changing one attribute: the foreground colour, the background colour, the digit.
Colourings, new colours and new digits are drawn from ``seed`` per image index, so the items
are the same on every machine. The rendered PNGs are written once into a cache folder
(``image_dir``, default ``<cache root>/digits-images-<resolution>``).

Items are picked round-robin over the digits (``per_digit`` held-out images of each digit, in
index order), so a small ``per_digit`` still covers all ten digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from framework import digits as D
from framework.dataset import DatasetPlugin, Item, check_unique
from framework.digits import item_spec, pick_indices
from framework.errors import ConfigError
from framework.images import tensor_to_pil
from framework.registry import DATASETS

EDIT_KINDS = ("fg", "bg", "digit")


@dataclass
class DigitsDataOptions:
    """Options of the ``digits`` dataset."""

    per_digit: int = 3  # held-out images per digit (0: every held-out image, about 30 per digit)
    edits: list[str] = field(default_factory=lambda: list(EDIT_KINDS))  # which attributes the targets change
    resolution: int = 16  # image side (the digits model's)
    seed: int = 0
    image_dir: str = ""  # where the PNGs are written (default: a cache folder)
    limit: int = 0  # use only the first ``limit`` items (0: all)


@DATASETS.register("digits")
class DigitsDataset(DatasetPlugin):
    """Held-out coloured digits with foreground, background and digit edits."""

    Options = DigitsDataOptions

    def items(self) -> list[Item]:
        o = self.options
        bad = [k for k in o.edits if k not in EDIT_KINDS]
        if bad or not o.edits:
            raise ConfigError(f"data.edits must be a non-empty list of {', '.join(EDIT_KINDS)}, got {list(o.edits)}")
        if o.resolution < 8 or o.resolution % 2:
            raise ConfigError(f"data.resolution must be an even number >= 8, got {o.resolution}")
        if o.image_dir:
            folder = Path(o.image_dir)
        else:
            from plugins.backbones.tiny import cache_root

            folder = cache_root() / f"digits-images-{o.resolution}"
        folder.mkdir(parents=True, exist_ok=True)
        items = []
        for index in pick_indices(o.per_digit):
            digit, fg, bg, targets, kinds = item_spec(index, o.seed, list(o.edits))
            path = folder / f"{index}_{fg}_{bg}.png"
            if not path.exists():
                img = D.render_indices([index], [fg], [bg], o.resolution)
                tmp = path.with_suffix(f".{id(self)}.tmp.png")
                tensor_to_pil(img)[0].save(tmp)
                tmp.replace(path)
            items.append(
                Item(
                    id=f"{index}_{DIGIT_ID[digit]}",
                    image_path=str(path),
                    source_prompt=D.prompt(digit, fg, bg),
                    target_prompts=targets,
                    extras={"heldout_index": index, "edit_kinds": ",".join(kinds)},
                )
            )
        if o.limit > 0:
            items = items[: o.limit]
        return check_unique(items, "digits dataset")


DIGIT_ID = D.DIGIT_WORDS
