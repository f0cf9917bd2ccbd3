"""``shape_iou``: how much of the digit's shape a colour edit keeps, and whether the colour changed.

For colour edits of the ``digits`` model (the target prompt changes the foreground and/or the
background colour, not the digit): the digit's mask before is the input's pixels nearer the
source foreground colour than the source background colour; after, the edit's pixels nearer the
target foreground than the target background colour.

Columns (empty where the digit changes or a prompt is not a digits prompt):

- ``shape_iou``: intersection over union of the two masks (1 = the shape is kept exactly);
- ``color_reached``: 1.0 when the mean colour of the edit over the region whose colour should
  change (the input's digit mask for a foreground edit, its background for a background edit;
  both for both) is nearest, in the palette, to the target colour; else 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from framework import digits as D
from framework.digits_eval import digit_mask, to_unit
from framework.metrics import Metric, MetricInput
from framework.registry import METRICS
from plugins.metrics.common import check_input
from plugins.metrics.digit_attributes import prompt_attributes


def iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boolean masks (B, H, W) -> (B,); two empty masks give 1."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def region_colour_reached(image: Tensor, region: Tensor, colour: int) -> bool:
    """Whether the mean colour of ``image`` (1, 3, H, W in [-1, 1]) over ``region`` (H, W) is
    nearest palette colour ``colour``."""
    if not bool(region.any()):
        return False
    x = to_unit(image)[0][:, region]  # (3, n)
    d = ((x.mean(1)[None] - D.palette_tensor()) ** 2).sum(1)
    return int(d.argmin()) == colour


@dataclass
class ShapeIoUOptions:
    """Options of the ``shape_iou`` metric (none)."""


@METRICS.register("shape_iou")
class ShapeIoUMetric(Metric):
    """Digit-mask IoU before vs after a colour edit, and whether the changed colour was reached."""

    Options = ShapeIoUOptions
    columns = ("shape_iou", "color_reached")
    ranges = dict.fromkeys(columns, (0.0, 1.0))

    def compute(self, batch: MetricInput) -> list[dict[str, float | None]]:
        check_input(batch, self.registered_name)
        src_img = batch.source_image.detach().float().cpu()
        edits = batch.edited_images.detach().float().cpu()
        source = prompt_attributes(batch.source_prompt)
        rows: list[dict[str, float | None]] = []
        for k, target_prompt in enumerate(batch.target_prompts):
            target = prompt_attributes(target_prompt)
            if source is None or target is None or target["digit"] != source["digit"]:
                rows.append({"shape_iou": None, "color_reached": None})
                continue
            before = digit_mask(src_img, torch.tensor([source["fg"]]), torch.tensor([source["bg"]]))[0]
            after = digit_mask(edits[k:k + 1], torch.tensor([target["fg"]]), torch.tensor([target["bg"]]))[0]
            value: dict[str, float | None] = {"shape_iou": float(iou(before[None], after[None])[0])}
            checks = []
            if target["fg"] != source["fg"]:
                checks.append(region_colour_reached(edits[k:k + 1], before, target["fg"]))
            if target["bg"] != source["bg"]:
                checks.append(region_colour_reached(edits[k:k + 1], ~before, target["bg"]))
            value["color_reached"] = float(all(checks)) if checks else None
            rows.append(value)
        return rows
